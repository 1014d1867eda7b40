"""How far user-level DP at epsilon 8 can take Beauty, with two generous baselines.

The Beauty user-level DP model stays far below the non-private one (docs/results.md,
"Privacy-utility"). This benchmark asks whether that is our training or the budget:

- ``transitions``: the next-item statistic that needs no training at all. Every user
  releases its item transitions (pairs up to 3 steps apart, weight 1 / distance) as one
  vector scaled to L2 norm 1, the sum over ALL users gets Gaussian noise once (one
  Gaussian mechanism, noise multiplier from the same PLD accountant for sampling rate 1
  and one step), and candidates are scored by the noisy row of the user's last
  item plus the noisy column sums (popularity). Only the ``vocab`` most popular items
  are kept, chosen from the true counts for free (not private): an optimistic ceiling.
- ``spectral``: item embeddings without training, from the noisy power method on the
  item co-occurrence matrix (DP PCA, the shape of McSherry and Mironov's private
  recommender). Every user's pairs up to 3 steps apart in both directions (weight
  1 / distance) form a symmetric matrix ``M_u`` of Frobenius norm 1. Each of
  ``iterations`` releases is ``sum_u clip(M_u Q) + Gaussian noise`` over ALL users (the
  clip is ``sqrt(rank / items)``, what ``M_u Q`` has for an orthonormal ``Q`` spread over
  the catalogue; no data-dependent choice), followed by ``Q = orth(release)``; the
  releases compose under the same PLD accountant. A candidate scores
  ``sum_k (1 / k) Y[i_k] . Q_prev[j]`` over the user's last 3 items ``i_k``. Whole
  catalogue, nothing chosen for free.
- ``fedavg``: the ``beauty-dp-model`` mechanism (Poisson-sampled users, one SGD step each,
  clipped to norm 1, Gaussian noise on the sum, FedAdam) on a model whose item table
  holds only the ``vocab`` most popular items (again chosen for free), run in-process
  with the cohort code the simulation uses.

Both evaluate with the project's protocol (full ranking over every item, history
excluded; items outside the vocabulary rank last). Delta is 1 / users, the most the
issue allows. Writes ``benchmarks/results/dp_ceiling.json`` (sections merged into an
existing file).

    python benchmarks/dp_ceiling.py [--only transitions spectral fedavg] [--epsilon 8]
        [--set vocab=1000]

Each fedavg run is kept under its settings (a rerun with the same settings replaces it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sparse
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.data.features import last_window, training_windows
from common.data.partitioning import load_split
from common.data.sequences import LeaveOneOutSplit
from common.evaluation.scoring import evaluate_scorer, evaluation_mode, flatten_metrics
from common.models import ModelConfig, build_model
from common.privacy.calibration import noise_for_target_epsilon
from common.storage.run_folder import write_json
from common.training.cohort import clipped_sgd_update, sampled_users

RESULTS = ROOT / "benchmarks" / "results" / "dp_ceiling.json"
HOPS = 3
VOCABS = (500, 1000, 2000, 4000)
SPECTRAL_RANKS = (16, 32, 64)
SPECTRAL_ITERATIONS = (2, 4, 8)


@dataclass(frozen=True)
class FedAvgSettings:
    """The beauty-dp preset's mechanism and training, on a top-``vocab`` item table."""

    vocab: int = 2000
    dim: int = 32
    layers: int = 2
    dropout: float = 0.2
    max_len: int = 50
    rate: float = 0.0894
    rounds: int = 400
    lr: float = 1.0
    server_lr: float = 0.02
    server: str = "adam"  # adam (Flower's FedAdam) or momentum (Flower's FedAvgM, 0.9)
    clip: float = 1.0
    eval_every: int = 50

    def __post_init__(self) -> None:
        if self.server not in ("adam", "momentum"):
            raise ValueError(f"server must be adam or momentum, got {self.server!r}")


def popular_items(split: LeaveOneOutSplit, size: int) -> np.ndarray:
    """The ``size`` items in most users' training sequences (true counts, not private)."""
    users = np.zeros(split.n_items + 1)
    for sequence in split.train:
        users[np.unique(sequence)] += 1
    users[0] = -1
    return np.argsort(-users, kind="stable")[:size]


def vocabulary_scorer(split: LeaveOneOutSplit, vocab: np.ndarray, score: Any) -> Any:
    """Scorer over the whole catalogue: ``score(histories)`` for the vocabulary, -inf else."""
    columns = torch.as_tensor(vocab)

    def scorer(histories: list[np.ndarray], times: list[np.ndarray] | None) -> torch.Tensor:
        full = torch.full((len(histories), split.n_items + 1), float("-inf"))
        full[:, columns] = score(histories)
        return full

    return scorer


def local_ids(split: LeaveOneOutSplit, vocab: np.ndarray) -> np.ndarray:
    """Map from item id to 1..len(vocab) in the vocabulary, len(vocab) + 1 outside, 0 pad."""
    mapping = np.full(split.n_items + 1, len(vocab) + 1, dtype=np.int64)
    mapping[0] = 0
    mapping[vocab] = np.arange(1, len(vocab) + 1)
    return mapping


def hop_pairs(sequence: np.ndarray, hops: int = HOPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (earlier, later) pair of a sequence up to ``hops`` steps apart, weight
    1 / distance: sources, targets, weights."""
    pairs = [(sequence[:-hop], sequence[hop:], 1.0 / hop) for hop in range(1, hops + 1)]
    sources = np.concatenate([p[0] for p in pairs])
    targets = np.concatenate([p[1] for p in pairs])
    weights = np.concatenate([np.full(len(p[0]), p[2]) for p in pairs])
    return sources, targets, weights


def transition_sums(split: LeaveOneOutSplit, mapping: np.ndarray, size: int) -> np.ndarray:
    """Sum over users of each user's transition vector scaled to L2 norm 1 (size x size)."""
    table = np.zeros((size + 2) * (size + 2))
    for sequence in split.train:
        sources, targets, weights = hop_pairs(mapping[sequence])
        keep = (sources <= size) & (targets <= size)
        if not keep.any():
            continue
        cells, inverse = np.unique(sources[keep] * (size + 2) + targets[keep], return_inverse=True)
        values = np.bincount(inverse, weights=weights[keep])
        table[cells] += values / np.sqrt((values**2).sum())
    return table.reshape(size + 2, size + 2)[1 : size + 1, 1 : size + 1]


def last_item_rows(mapping: np.ndarray, table: np.ndarray) -> Any:
    """Score = the table's row of the last item plus its column sums (popularity), which
    alone score a last item outside the vocabulary."""
    size = len(table)
    popularity = table.sum(0) / np.abs(table.sum(0)).max()
    scores = torch.as_tensor(table + popularity, dtype=torch.float32)
    fallback = torch.as_tensor(popularity, dtype=torch.float32)

    def score(histories: list[np.ndarray]) -> torch.Tensor:
        last = np.array([mapping[history[-1]] for history in histories]) - 1
        rows = scores[torch.as_tensor(np.clip(last, 0, size - 1))]
        rows[torch.as_tensor(last >= size)] = fallback
        return rows

    return score


def transitions(split: LeaveOneOutSplit, epsilon: float | None, delta: float) -> list[dict]:
    """The noisy transition statistic at each vocabulary size, valid and test metrics."""
    rows = []
    ranked = popular_items(split, max(VOCABS))  # each vocabulary is a prefix of it
    noise = noise_for_target_epsilon(epsilon, delta, 1.0, 1) if epsilon else 0.0
    for size in VOCABS:
        vocab = ranked[:size]
        mapping = local_ids(split, vocab)
        table = transition_sums(split, mapping, size)
        rng = np.random.default_rng(0)
        noisy = table + rng.normal(0.0, noise, table.shape) if noise else table
        scorer = vocabulary_scorer(split, vocab, last_item_rows(mapping, noisy))
        result: dict[str, Any] = {
            "vocab": size,
            "epsilon": epsilon,
            "delta": delta,
            "noise_multiplier": noise,
        }
        for stage in ("valid", "test"):
            metrics = flatten_metrics(*evaluate_scorer(scorer, split, stage))
            result[stage] = {key: metrics[key] for key in ("hr@10", "ndcg@10")}
        print(result, flush=True)
        rows.append(result)
    return rows


@dataclass(frozen=True)
class PairRows:
    """Every user's unit-norm pair matrix ``M_u``, stacked by (user, source item) rows."""

    matrix: sparse.csr_matrix  # (user, item) row x item column: the weights of M_u
    users: np.ndarray  # the user of each row
    items: np.ndarray  # the source item of each row


def pair_rows(split: LeaveOneOutSplit, hops: int = HOPS) -> PairRows:
    """Each user's pairs up to ``hops`` apart, both directions, weight 1 / distance,
    scaled so that the user's matrix has Frobenius norm 1 (sensitivity 1)."""
    size = split.n_items + 1
    keys, weights, users = [], [], []
    for user, sequence in enumerate(split.train):
        earlier, later, hop_weights = hop_pairs(sequence, hops)
        if not len(earlier):
            continue
        sources, targets = np.concatenate([earlier, later]), np.concatenate([later, earlier])
        cells, inverse = np.unique(sources * size + targets, return_inverse=True)
        values = np.bincount(inverse, weights=np.concatenate([hop_weights, hop_weights]))
        keys.append(cells)
        weights.append(values / np.sqrt((values**2).sum()))
        users.append(np.full(len(cells), user))
    cell, owner = np.concatenate(keys), np.concatenate(users)
    row_keys, row = np.unique(owner * size + cell // size, return_inverse=True)
    matrix = sparse.csr_matrix(
        (np.concatenate(weights), (row, cell % size)), shape=(len(row_keys), size)
    )
    return PairRows(matrix, row_keys // size, row_keys % size)


def clipped_product(rows: PairRows, q: np.ndarray, clip: float, n_users: int) -> np.ndarray:
    """``sum_u min(1, clip / |M_u q|) M_u q``: every user adds at most ``clip``."""
    product = rows.matrix @ q
    norms = np.sqrt(np.bincount(rows.users, weights=(product**2).sum(1), minlength=n_users))
    factors = np.minimum(1.0, clip / np.maximum(norms, 1e-30))
    total = np.zeros((rows.matrix.shape[1], q.shape[1]))
    np.add.at(total, rows.items, factors[rows.users, None] * product)
    return total


def power_scorer(left: np.ndarray, right: np.ndarray) -> Any:
    """Score ``sum_k (1 / k) left[i_k] . right[j]`` over the last ``HOPS`` items ``i_k``."""
    right_t = torch.as_tensor(right.T, dtype=torch.float32)

    def scorer(histories: list[np.ndarray], times: list[np.ndarray] | None) -> torch.Tensor:
        queries = np.zeros((len(histories), left.shape[1]))
        for row, history in enumerate(histories):
            for distance, item in enumerate(history[::-1][:HOPS], start=1):
                queries[row] += left[item] / distance
        scores = torch.as_tensor(queries, dtype=torch.float32) @ right_t
        scores[:, 0] = float("-inf")
        return scores

    return scorer


def spectral(
    split: LeaveOneOutSplit, epsilon: float | None, delta: float, rows: PairRows,
    rank: int, iterations: int,
) -> dict[str, Any]:  # fmt: skip
    """The noisy power method at one rank and number of releases; valid and test metrics."""
    noise = noise_for_target_epsilon(epsilon, delta, 1.0, iterations) if epsilon else 0.0
    clip = float(np.sqrt(rank / (split.n_items + 1)))
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.standard_normal((split.n_items + 1, rank)))[0]
    for _ in range(iterations):
        released = clipped_product(rows, q, clip, split.n_users)
        released += rng.normal(0.0, noise * clip, released.shape)
        left, right, q = released, q, np.linalg.qr(released)[0]
    result: dict[str, Any] = {"rank": rank, "iterations": iterations, "epsilon": epsilon,
                              "delta": delta, "noise_multiplier": noise, "clip": clip}  # fmt: skip
    scorer = power_scorer(left, right)
    for stage in ("valid", "test"):
        metrics = flatten_metrics(*evaluate_scorer(scorer, split, stage))
        result[stage] = {key: metrics[key] for key in ("hr@10", "ndcg@10")}
    print(result, flush=True)
    return result


def fedavg_settings(changes: list[str], parser: argparse.ArgumentParser) -> FedAvgSettings:
    """The default settings with ``FIELD=VALUE`` changes (a bad one stops with a message)."""
    defaults = FedAvgSettings()
    values: dict[str, Any] = {}
    for change in changes:
        field, _, text = change.partition("=")
        if field not in asdict(defaults) or not text:
            parser.error(f"--set {change!r}: expected FIELD=VALUE, FIELD one of "
                         f"{', '.join(asdict(defaults))}")  # fmt: skip
        try:
            values[field] = type(getattr(defaults, field))(text)
        except ValueError:
            parser.error(f"--set {change!r}: {text!r} is not a valid {field}")
    try:
        return replace(defaults, **values)
    except ValueError as error:
        parser.error(f"--set: {error}")


def fedavg(
    split: LeaveOneOutSplit, settings: FedAvgSettings, epsilon: float, delta: float
) -> dict[str, Any]:
    """User-level DP-FedAvg (the beauty-dp-model mechanism) on a top-``vocab`` item table."""
    size, users = settings.vocab, split.n_users
    vocab = popular_items(split, size)
    mapping = local_ids(split, vocab)
    train = [mapping[sequence] for sequence in split.train]
    torch.manual_seed(42)
    model = build_model(
        ModelConfig(dim=settings.dim, layers=settings.layers, dropout=settings.dropout,
                    max_len=settings.max_len),
        size + 1,
    )  # fmt: skip
    noise = noise_for_target_epsilon(epsilon, delta, settings.rate, settings.rounds)
    expected = settings.rate * users
    params = dict(model.named_parameters())
    first = {name: torch.zeros_like(value) for name, value in params.items()}
    second = {name: torch.zeros_like(value) for name, value in params.items()}
    rng = np.random.default_rng(42)

    def score(histories: list[np.ndarray]) -> torch.Tensor:
        items, _ = last_window([mapping[h] for h in histories], settings.max_len, None, 0)
        return model.scores(torch.as_tensor(items), None)[:, 1 : size + 1].float()

    scorer = vocabulary_scorer(split, vocab, score)
    history, best, best_state = [], -1.0, None
    started = time.perf_counter()
    for server_round in range(1, settings.rounds + 1):
        chosen = np.flatnonzero(sampled_users(users, settings.rate, 42, server_round))
        windows = training_windows([train[i] for i in chosen], settings.max_len, None, 0)
        windows.targets[windows.targets == size + 1] = 0  # nothing to learn outside
        update = clipped_sgd_update(model, windows, settings.lr, settings.clip)
        step = settings.server_lr * np.sqrt(1 - 0.99 ** (server_round + 1))
        step /= 1 - 0.9 ** (server_round + 1)  # Flower FedAdam's bias-corrected rate
        with torch.no_grad():
            for name, param in params.items():
                total = torch.as_tensor(update.delta_sum[name])
                total += torch.as_tensor(rng.normal(0, noise * settings.clip, total.shape),
                                         dtype=total.dtype)  # fmt: skip
                mean = total / expected
                if settings.server == "momentum":  # Flower FedAvgM: v = 0.9 v + mean
                    first[name].mul_(0.9).add_(mean)
                    param.add_(settings.server_lr * first[name])
                    continue
                first[name].mul_(0.9).add_(0.1 * mean)
                second[name].mul_(0.99).add_(0.01 * mean * mean)
                param.add_(step * first[name] / (second[name].sqrt() + 1e-8))
        if server_round % settings.eval_every == 0:
            with evaluation_mode(model):
                valid = flatten_metrics(*evaluate_scorer(scorer, split, "valid"))["hr@10"]
            history.append({"round": server_round, "valid_hr@10": valid})
            print(history[-1], f"{time.perf_counter() - started:.0f} s", flush=True)
            if valid > best:
                best = valid
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    with evaluation_mode(model):
        test = flatten_metrics(*evaluate_scorer(scorer, split, "test"))
    return {
        "settings": asdict(settings),
        "epsilon": epsilon,
        "delta": delta,
        "noise_multiplier": noise,
        "history": history,
        "test": {key: test[key] for key in ("hr@10", "ndcg@10")},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections on Beauty and write ``dp_ceiling.json``."""
    parser = argparse.ArgumentParser(prog="python benchmarks/dp_ceiling.py", description=__doc__)
    sections = ["transitions", "spectral", "fedavg"]
    parser.add_argument("--only", nargs="+", default=sections, choices=sections)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a fedavg setting, e.g. --set vocab=1000")  # fmt: skip
    args = parser.parse_args(argv)
    settings = fedavg_settings(args.set, parser)
    split = load_split("beauty")
    delta = 1.0 / split.n_users
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update({"dataset": "beauty", "users": split.n_users})
    if "transitions" in args.only:
        results["transitions"] = transitions(split, args.epsilon, delta)
        results["transitions_without_dp"] = transitions(split, None, delta)
    if "spectral" in args.only:
        rows = pair_rows(split)
        results["spectral"] = [
            spectral(split, budget, delta, rows, rank, iterations)
            for budget in (args.epsilon, None)
            for rank in SPECTRAL_RANKS
            for iterations in SPECTRAL_ITERATIONS
        ]
    if "fedavg" in args.only:
        run = fedavg(split, settings, args.epsilon, delta)
        earlier = [r for r in results.get("fedavg", []) if r["settings"] != run["settings"]]
        results["fedavg"] = [*earlier, run]
    write_json(RESULTS, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
