"""``fedseqrec-recommend``: a user's top-K next items, computed on the device.

``python -m client.recommend --checkpoint results/RUN/best_checkpoint.pt --items 50,172,133``

``--items`` are original item ids in time order (most recent last). The command reads
only local files: the checkpoint (weights, model config and catalogue, see
:mod:`common.federation.checkpoints`) and, for an ML-100k catalogue, ``u.item`` for titles. Items
the user already has are never recommended. Item ids the checkpoint's catalogue does
not know are skipped with a warning naming them: on a device the newest items can
postdate the model, which has no embedding for them, and refusing would leave the
device without recommendations until the next training round. Bad input is one line
on stderr and exit status 2.

When the run released DP statistics for the on-device scorer (``scorer.json`` and
``statistics.npz`` beside the checkpoint, :mod:`common.evaluation.scorer_files`), the
list comes from that scorer (:mod:`common.evaluation.on_device`): the user's own recent
items, the public item attributes and the released statistics, plus the model's scores
weighted by the recorded ``model_weight``. It runs on the device, so it costs no privacy
beyond the released statistics. ``--scorer PATH`` names the files elsewhere,
``--no-scorer`` ranks by the model alone, ``--item-attributes SOURCE`` replaces the
recorded attribute source (the device's copy of the public catalogue).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data.item_text import ml100k_item_texts
from common.data.loaders import builtin_path
from common.evaluation.on_device import OnDeviceScorer
from common.evaluation.scorer_files import load_scorer, scorer_file
from common.evaluation.scoring import evaluation_mode, model_scorer
from common.federation.checkpoints import Checkpoint, ItemId, load_checkpoint

logger = logging.getLogger("fedseqrec.recommend")

USAGE_ERROR = 2


@dataclass(frozen=True)
class Recommendation:
    """One recommended item: 1-based rank, original id, model score, title if known."""

    rank: int
    item: ItemId
    score: float
    title: str | None


def parse_items(text: str, catalogue: Sequence[ItemId]) -> list[ItemId]:
    """Comma-separated ids; integers when the catalogue's ids are integers."""
    tokens = [token.strip() for token in text.split(",") if token.strip()]
    if not tokens:
        raise ValueError("--items: give at least one item id, e.g. --items 50,172,133")
    if not all(isinstance(item, int) for item in catalogue):
        return list(tokens)
    for token in tokens:
        if not token.lstrip("-").isdigit():
            raise ValueError(f"--items: {token!r} is not a numeric item id")
    return [int(token) for token in tokens]


def item_indices(
    items: Sequence[ItemId], catalogue: Sequence[ItemId]
) -> tuple[list[int], list[ItemId]]:
    """Model indices of the known items (order kept) and the unknown ids."""
    index_of = {item: index for index, item in enumerate(catalogue, start=1)}
    known = [index_of[item] for item in items if item in index_of]
    unknown = [item for item in items if item not in index_of]
    return known, unknown


def model_scores(checkpoint: Checkpoint, history: Sequence[int]) -> np.ndarray:
    """The model's scores ``(n_items + 1,)`` after ``history``; column 0 (padding) is -inf."""
    config = checkpoint.model_config
    if config.n_gap_buckets:
        logger.warning("the model was trained with time-gap features; scoring without them")
    model = checkpoint.build_model()
    with evaluation_mode(model), torch.no_grad():
        scorer = model_scorer(model, config.max_len, config.n_gap_buckets)
        scores = scorer([np.asarray(history, dtype=np.int64)], None)[0]
    return scores.to(torch.float32).numpy().copy()


def item_scores(
    checkpoint: Checkpoint, history: Sequence[int], scorer: OnDeviceScorer | None
) -> np.ndarray:
    """Scores of every item index, history items and padding -inf.

    Without a scorer they are the model's; with one, the on-device scorer's, given the
    model's scores only when its ``model_weight`` is not 0 (same item indexing).
    """
    if scorer is None:
        scores = model_scores(checkpoint, history)
        scores[list(history)] = -np.inf
        return scores
    if scorer.n_items != checkpoint.n_items:
        raise ValueError(
            f"the scorer covers {scorer.n_items} items, the checkpoint {checkpoint.n_items}"
        )
    weighted = model_scores(checkpoint, history) if scorer.settings.model_weight else None
    return scorer.scores(np.asarray(history, dtype=np.int64), weighted)


def best_items(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(item index, score) of the k best finite scores; ties keep the lower index first.

    The order of :meth:`OnDeviceScorer.top_k`, so the list is reproducible.
    """
    if k < 1:
        raise ValueError(f"--k must be positive, got {k}")
    order = np.lexsort((np.arange(len(scores)), -scores))
    candidates = int(np.isfinite(scores).sum())
    return [(int(i), float(scores[i])) for i in order[: min(k, candidates)]]


def titles_file(dataset: str) -> Path | None:
    """``u.item`` of an ML-100k catalogue: beside its ``u.data``, else the embedded copy."""
    if dataset != "ml-100k" and Path(dataset).name != "u.data":
        return None
    candidates = [builtin_path("ml-100k").with_name("u.item")]
    if dataset != "ml-100k":
        candidates.insert(0, Path(dataset).with_name("u.item"))
    return next((path for path in candidates if path.is_file()), None)


def load_titles(checkpoint: Checkpoint, path: Path | None) -> dict[ItemId, str]:
    """Titles by original id from ``path`` or the catalogue's own u.item; {} if none."""
    path = path or titles_file(checkpoint.dataset)
    if path is None:
        return {}
    genres = path.with_name("u.genre")
    texts = ml100k_item_texts(path, genres if genres.is_file() else None)
    return {item: text for item, text in texts.items()}


def recommend(
    checkpoint: Checkpoint,
    items: Sequence[ItemId],
    k: int,
    titles: dict[ItemId, str],
    scorer: OnDeviceScorer | None = None,
) -> tuple[list[Recommendation], list[ItemId]]:
    """Top-k recommendations after ``items`` and the ids skipped as unknown."""
    history, unknown = item_indices(items, checkpoint.item_ids)
    if not history:
        raise ValueError(
            f"none of the items {', '.join(map(str, items))} is in the checkpoint's catalogue "
            f"of {checkpoint.n_items} items"
        )
    best = best_items(item_scores(checkpoint, history, scorer), k)
    ranked = []
    for rank, (index, score) in enumerate(best, start=1):
        item = checkpoint.item_ids[index - 1]
        ranked.append(Recommendation(rank, item, score, titles.get(item)))
    return ranked, unknown


def find_scorer(args: argparse.Namespace, checkpoint: Checkpoint) -> OnDeviceScorer | None:
    """The on-device scorer the flags ask for: ``--scorer``, beside the checkpoint, or none."""
    if args.no_scorer:
        if args.item_attributes:
            raise ValueError("--item-attributes: only the on-device scorer uses them")
        return None
    location = args.scorer or args.checkpoint.parent
    scorer = load_scorer(location, checkpoint.item_ids, args.item_attributes or "")
    if scorer is None and args.scorer:
        raise ValueError(f"--scorer: {scorer_file(args.scorer)} not found")
    if scorer is None and args.item_attributes:
        raise ValueError(
            f"--item-attributes: no {scorer_file(location).name} beside the checkpoint, "
            "so no scorer uses them"
        )
    return scorer


def scorer_description(args: argparse.Namespace, scorer: OnDeviceScorer | None) -> dict[str, Any]:
    """Which scorer produced the list, for the output."""
    if scorer is None:
        return {"kind": "model"}
    return {
        "kind": "on-device",
        "file": str(scorer_file(args.scorer or args.checkpoint.parent)),
        "settings": asdict(scorer.settings),
    }


def scorer_line(description: dict[str, Any]) -> str:
    """One line naming the scorer, above the table."""
    if description["kind"] == "model":
        return "scorer: model alone"
    weight = description["settings"]["model_weight"]
    model = f"model weight {weight:g}" if weight else "model not used"
    return f"scorer: on-device ({description['file']}; {model})"


def format_table(recommendations: list[Recommendation]) -> str:
    """Aligned text: rank, item id, score, title."""
    lines = [f"{'rank':>4}  {'item':>8}  {'score':>8}  title"]
    for r in recommendations:
        lines.append(f"{r.rank:>4}  {r.item!s:>8}  {r.score:>8.3f}  {r.title or ''}".rstrip())
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    parser = argparse.ArgumentParser(prog="fedseqrec-recommend", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint .pt file")
    parser.add_argument("--items", required=True, help="recent item ids, oldest first: 50,172")
    parser.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--titles", type=Path, help="ML-100k u.item file (default: found)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--scorer", type=Path, help="scorer.json or its folder (default: beside the checkpoint)"
    )
    choice.add_argument("--no-scorer", action="store_true", help="rank by the model alone")
    parser.add_argument(
        "--item-attributes",
        help="public item attributes (builtin or a path) instead of the recorded source",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input is one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", force=True)
    args = build_parser().parse_args(argv)
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        items = parse_items(args.items, checkpoint.item_ids)
        titles = load_titles(checkpoint, args.titles)
        scorer = find_scorer(args, checkpoint)
        ranked, unknown = recommend(checkpoint, items, args.k, titles, scorer)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    if unknown:
        logger.warning(
            "skipped item(s) %s: not in the checkpoint's catalogue (newer than the model?)",
            ", ".join(map(str, unknown)),
        )
    description = scorer_description(args, scorer)
    if args.json:
        payload = {
            "checkpoint": str(args.checkpoint),
            "round": checkpoint.round,
            "scorer": description,
            "skipped": unknown,
            "recommendations": [asdict(r) for r in ranked],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(scorer_line(description))
        print(format_table(ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
