"""A client's DP-SGD history: kept in context.state, and seeded from its ledger across runs."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, RecordDict

from client.local_privacy import load_history, save_history
from common.privacy.accounting import Release
from common.privacy.ledger import PrivacyLedger


def fresh_context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_first_round_of_a_run_starts_from_the_nodes_earlier_releases(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    earlier = [Release(1.1, 0.25, 8), Release(1.1, 0.25, 8)]
    for round_, release in enumerate(earlier, start=1):
        ledger.record_release("node-a", release, delta=1e-3, population=100, run_id="last-week", round=round_,
                              unit="user", mechanism="dp-sgd", clip_norm=1.0)  # fmt: skip
    ledger.record_release("node-b", Release(2.0, 0.5, 1), delta=1e-3, population=100,
                          run_id="last-week",
                          round=1, unit="user", mechanism="dp-sgd", clip_norm=1.0)  # fmt: skip
    context = fresh_context()

    history = load_history(context, ledger, "node-a")

    assert history == earlier  # only this node's releases, in order
    save_history(context, [*history, Release(0.9, 0.5, 4)])
    assert load_history(context, ledger, "node-a")[-1] == Release(0.9, 0.5, 4)  # state wins


def test_a_client_without_a_ledger_starts_with_no_history(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "missing" / "ledger.jsonl")
    assert load_history(fresh_context(), ledger, "client-0") == []
