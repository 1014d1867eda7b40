"""Baselines on the built-in Sports and Toys agree with the reference figures (about a minute).

Reference test HR@10 (history excluded) from ../shared/data/README.md and issue 16, and
what our protocol gives. Popularity agrees exactly. Our Markov chain is 0.0001 / 0.0005
below the reference on Sports / Toys (and 0.0755 vs 0.0757 on Beauty): the reference's
exact tie handling is unknown; the gap stays pinned here, never tuned away. Full ranking
of 35,598 and 19,412 users takes 25-40 s each on two shared cores, hence e2e.
"""

from __future__ import annotations

import pytest

from common.data.partitioning import load_split
from common.evaluation.scoring import evaluate_baselines

NEW_SET_BASELINES = [
    ("sports", {"popularity": 0.0091, "markov": 0.0410}, {"popularity": 0.0091, "markov": 0.0409}),
    ("toys", {"popularity": 0.0090, "markov": 0.0822}, {"popularity": 0.0090, "markov": 0.0817}),
]


@pytest.mark.parametrize(("name", "reference", "ours"), NEW_SET_BASELINES)
def test_baselines_on_sports_and_toys_agree_with_the_reference(
    name: str, reference: dict[str, float], ours: dict[str, float]
) -> None:
    results = evaluate_baselines(load_split(name), "test")

    got = {baseline: round(metrics["hr@10"], 4) for baseline, metrics in results.items()}
    assert got == ours
    assert got["popularity"] == reference["popularity"]
    assert round(abs(got["markov"] - reference["markov"]), 4) <= 0.0005
