"""Full-ranking evaluation of next-item recommenders.

The target is ranked against *every* real item (ids ``1..n_items``); column 0 of a
score matrix is padding and never a candidate. Ties are counted against the model,
so a constant scorer gets the worst possible rank instead of a flattering one.
Metric sums are kept in :class:`RankingAccumulator` so that batches and federated
clients combine exactly (sums and counts, never averages of averages).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


def _check_scores(scores: Tensor) -> int:
    """Validate a ``(B, n_items + 1)`` float score matrix and return ``n_items``.

    NaN is rejected because it compares false with everything and would silently
    give the target a flattering rank.
    """
    if not isinstance(scores, Tensor):
        raise ValueError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (B, n_items + 1), got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating tensor, got dtype {scores.dtype}")
    if scores.shape[1] < 2:
        raise ValueError("scores needs at least 2 columns (padding column 0 plus one item)")
    # amax propagates NaN and is much cheaper than a full isnan() mask.
    if scores.numel() and bool(torch.isnan(scores.amax())):
        raise ValueError("scores contain NaN")
    return int(scores.shape[1]) - 1


def _check_targets(targets: Tensor, batch: int, n_items: int) -> Tensor:
    """Validate target item ids (1-D, integer, in ``1..n_items``) and return them as int64."""
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dim() != 1 or targets.shape[0] != batch:
        raise ValueError(f"targets must have shape ({batch},), got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got dtype {targets.dtype}")
    targets = targets.long()
    if batch and (int(targets.min()) < 1 or int(targets.max()) > n_items):
        raise ValueError(f"targets must be item ids in 1..{n_items} (0 is padding)")
    return targets


def _count_true(mask: Tensor) -> Tensor:
    """Row-wise number of True entries of a 2-D bool mask, as int64.

    Summing the uint8 view in int32 is about twice as fast as ``mask.sum(dim=1)``.
    """
    return mask.contiguous().view(torch.uint8).sum(dim=1, dtype=torch.int32).long()


def _flatten_ids(
    id_lists: Sequence[np.ndarray | Tensor], batch: int, n_items: int, name: str
) -> tuple[Tensor, Tensor]:
    """Flatten per-row item-id lists into ``(row, item)`` index tensors.

    Built by concatenation plus ``repeat_interleave`` so callers can scatter into a
    ``(B, n_items + 1)`` mask in a single vectorized indexing operation.
    """
    if len(id_lists) != batch:
        raise ValueError(
            f"{name} must hold one id array per row: expected {batch}, got {len(id_lists)}"
        )
    parts: list[Tensor] = []
    for ids in id_lists:
        part = torch.as_tensor(ids).reshape(-1)
        if part.numel() and (
            part.is_floating_point() or part.is_complex() or part.dtype == torch.bool
        ):
            raise ValueError(f"{name} must hold integer item ids, got dtype {part.dtype}")
        parts.append(part.long())
    lengths = torch.tensor([p.numel() for p in parts], dtype=torch.long)
    cols = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) > n_items):
        raise ValueError(f"{name} must hold item ids in 0..{n_items}")
    rows = torch.repeat_interleave(torch.arange(batch), lengths)
    return rows, cols


def target_ranks(
    scores: Tensor, targets: Tensor, exclude: Sequence[np.ndarray | Tensor] | None = None
) -> Tensor:
    """0-based rank of each target among all candidate items.

    Parameters
    ----------
    scores : Tensor, shape (B, n_items + 1)
        Float scores; column 0 is padding. Not modified.
    targets : Tensor, shape (B,)
        Target item ids in ``1..n_items``.
    exclude : list of int arrays, optional
        ``exclude[b]`` holds item ids (e.g. the input history) removed from the
        candidates of row ``b``. The target itself is never removed.

    Returns
    -------
    Tensor, shape (B,), int64
        Number of candidates ``j != target`` with ``scores[j] >= scores[target]``:
        ties count against the model, so a constant scorer gets the worst rank.
    """
    n_items = _check_scores(scores)
    batch = int(scores.shape[0])
    targets = _check_targets(targets, batch, n_items)
    row_ids = torch.arange(batch)
    target_scores = scores[row_ids, targets].unsqueeze(1)
    beats = scores >= target_scores  # fresh tensor: the caller's scores stay untouched
    beats[:, 0] = False
    if exclude is not None:
        rows, cols = _flatten_ids(exclude, batch, n_items, "exclude")
        beats[rows, cols] = False
    beats[row_ids, targets] = False
    return _count_true(beats)


def n_candidates(
    n_items: int, targets: Tensor, exclude: Sequence[np.ndarray | Tensor] | None = None
) -> Tensor:
    """Number of ranked items per row: the target plus every non-excluded real item.

    Duplicates and padding ids in ``exclude`` are ignored and the target is never
    removed, matching :func:`target_ranks`. Needed to normalise the rank into AUC.

    Returns
    -------
    Tensor, shape (B,), int64
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    if not isinstance(targets, Tensor) or targets.dim() != 1:
        raise ValueError("targets must be a 1-D torch.Tensor of item ids")
    batch = int(targets.shape[0])
    targets = _check_targets(targets, batch, n_items)
    counts = torch.full((batch,), n_items, dtype=torch.long)
    if exclude is None:
        return counts
    rows, cols = _flatten_ids(exclude, batch, n_items, "exclude")
    removed = torch.zeros(batch, n_items + 1, dtype=torch.bool)
    removed[rows, cols] = True
    removed[:, 0] = False
    removed[torch.arange(batch), targets] = False
    return counts - _count_true(removed)


def _check_int_vector(values: Tensor, name: str) -> None:
    """Raise ValueError unless ``values`` is a 1-D integer tensor."""
    if not isinstance(values, Tensor) or values.dim() != 1:
        raise ValueError(f"{name} must be a 1-D torch.Tensor")
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {values.dtype}")


@dataclass
class RankingAccumulator:
    """Running sums of ranking metrics that merge exactly across batches and clients.

    Per user: ``HR@K = [rank < K]``, ``NDCG@K = [rank < K] / log2(rank + 2)``,
    ``RR = 1 / (rank + 1)`` and ``AUC = 1 - rank / (n_candidates - 1)`` (1.0 when
    the target is the only candidate). Only sums and the user count are stored, so
    merging accumulators equals accumulating the concatenated batches.
    """

    ks: tuple[int, ...] = (5, 10, 20)
    count: int = 0
    hit_sums: dict[int, float] = field(default_factory=dict)
    ndcg_sums: dict[int, float] = field(default_factory=dict)
    rr_sum: float = 0.0
    auc_sum: float = 0.0

    def __post_init__(self) -> None:
        """Validate the cut-offs and zero-fill missing per-K sums."""
        self.ks = tuple(self.ks)
        if not self.ks or any(not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"ks must be a non-empty tuple of positive ints, got {self.ks}")
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks must not contain duplicates, got {self.ks}")
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        for name, sums in (("hit_sums", self.hit_sums), ("ndcg_sums", self.ndcg_sums)):
            unknown = set(sums) - set(self.ks)
            if unknown:
                raise ValueError(f"{name} has cut-offs {sorted(unknown)} not in ks={self.ks}")
            for k in self.ks:
                sums.setdefault(k, 0.0)

    def add(self, ranks: Tensor, n_candidates: Tensor) -> None:
        """Add one batch of 0-based target ranks and their candidate counts."""
        _check_int_vector(ranks, "ranks")
        _check_int_vector(n_candidates, "n_candidates")
        if ranks.shape != n_candidates.shape:
            raise ValueError(
                f"ranks and n_candidates must have the same shape, got "
                f"{tuple(ranks.shape)} and {tuple(n_candidates.shape)}"
            )
        if ranks.numel() == 0:
            return
        if int(ranks.min()) < 0:
            raise ValueError("ranks must be >= 0")
        if int(n_candidates.min()) < 1:
            raise ValueError("n_candidates must be >= 1 (the target is always a candidate)")
        if bool((ranks >= n_candidates).any()):
            raise ValueError("every rank must be <= n_candidates - 1")
        rank_f = ranks.to(torch.float64)
        discount = 1.0 / torch.log2(rank_f + 2.0)
        for k in self.ks:
            hit = ranks < k
            self.hit_sums[k] += float(hit.sum())
            self.ndcg_sums[k] += float(torch.where(hit, discount, 0.0).sum())
        self.rr_sum += float((1.0 / (rank_f + 1.0)).sum())
        negatives = (n_candidates - 1).to(torch.float64)
        auc = torch.where(negatives > 0, 1.0 - rank_f / negatives.clamp(min=1.0), 1.0)
        self.auc_sum += float(auc.sum())
        self.count += int(ranks.numel())

    def merge(self, other: RankingAccumulator) -> RankingAccumulator:
        """Add ``other``'s sums into this accumulator in place and return ``self``."""
        if not isinstance(other, RankingAccumulator):
            raise ValueError(f"can only merge a RankingAccumulator, got {type(other).__name__}")
        if set(other.ks) != set(self.ks):
            raise ValueError(f"cannot merge accumulators with ks {self.ks} and {other.ks}")
        for k in self.ks:
            self.hit_sums[k] += other.hit_sums[k]
            self.ndcg_sums[k] += other.ndcg_sums[k]
        self.rr_sum += other.rr_sum
        self.auc_sum += other.auc_sum
        self.count += other.count
        return self

    def to_sums(self) -> dict[str, float]:
        """Plain-float sums (e.g. for a Flower metrics dict); inverse of :meth:`from_sums`."""
        sums: dict[str, float] = {"count": float(self.count)}
        for k in self.ks:
            sums[f"sum_hr@{k}"] = float(self.hit_sums[k])
            sums[f"sum_ndcg@{k}"] = float(self.ndcg_sums[k])
        sums["sum_rr"] = float(self.rr_sum)
        sums["sum_auc"] = float(self.auc_sum)
        return sums

    @classmethod
    def from_sums(cls, sums: Mapping[str, float]) -> RankingAccumulator:
        """Rebuild an accumulator from :meth:`to_sums` output.

        Keys other than ``"count"`` and ``"sum_*"`` are ignored, so the sums can
        travel inside a larger metrics dict; ``ks`` is inferred from ``sum_hr@K``.
        """
        missing = {"count", "sum_rr", "sum_auc"} - set(sums)
        if missing:
            raise ValueError(f"sums is missing keys {sorted(missing)}")
        ks: list[int] = []
        for key in sums:
            if not key.startswith("sum_") or key in ("sum_rr", "sum_auc"):
                continue
            prefix, _, cutoff = key.partition("@")
            if prefix not in ("sum_hr", "sum_ndcg") or not cutoff.isdigit():
                raise ValueError(f"unrecognised sum key {key!r}")
            if prefix == "sum_hr":
                ks.append(int(cutoff))
        for k in ks:
            if f"sum_ndcg@{k}" not in sums:
                raise ValueError(f"sums has 'sum_hr@{k}' but no 'sum_ndcg@{k}'")
        if not ks:
            raise ValueError("sums holds no 'sum_hr@K' keys")
        count = float(sums["count"])
        if count < 0 or not count.is_integer():
            raise ValueError(f"count must be a non-negative integer, got {sums['count']}")
        return cls(
            ks=tuple(sorted(ks)),
            count=int(count),
            hit_sums={k: float(sums[f"sum_hr@{k}"]) for k in ks},
            ndcg_sums={k: float(sums[f"sum_ndcg@{k}"]) for k in ks},
            rr_sum=float(sums["sum_rr"]),
            auc_sum=float(sums["sum_auc"]),
        )

    def result(self) -> dict[str, float]:
        """Mean metrics (``hr@K``, ``ndcg@K``, ``mrr``, ``auc``) plus ``count``; zeros if empty."""
        denom = float(self.count) if self.count else 1.0
        out: dict[str, float] = {}
        for k in self.ks:
            out[f"hr@{k}"] = self.hit_sums[k] / denom
        for k in self.ks:
            out[f"ndcg@{k}"] = self.ndcg_sums[k] / denom
        out["mrr"] = self.rr_sum / denom
        out["auc"] = self.auc_sum / denom
        out["count"] = float(self.count)
        return out


def long_horizon_hits(
    scores: Tensor,
    futures: Sequence[np.ndarray | Tensor],
    k: int,
    exclude: Sequence[np.ndarray | Tensor] | None = None,
) -> Tensor:
    """Whether each row's top-k list contains any of the user's next items.

    A long-term view of quality: a recommendation counts if the user interacts
    with it at any of the next H steps, not only the very next one.

    Parameters
    ----------
    scores : Tensor, shape (B, n_items + 1)
        Float scores; column 0 is padding. Not modified.
    futures : list of int arrays
        ``futures[b]`` holds the next H item ids of row ``b``; padding 0 is ignored
        and an empty array never hits.
    k : int
        Length of the recommended list.
    exclude : list of int arrays, optional
        Items (e.g. the input history) removed from row ``b``'s candidates before
        the top-k list is taken; an excluded future item can therefore never hit.

    Returns
    -------
    Tensor, shape (B,), bool

    Notes
    -----
    Ties are broken by the lowest item index, so the top-k list is deterministic
    (``torch.topk`` gives no tie guarantee): all candidates scoring strictly above
    the k-th best score are in, then tied candidates in increasing id order.
    """
    n_items = _check_scores(scores)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    batch = int(scores.shape[0])
    candidate = torch.ones(scores.shape, dtype=torch.bool)
    candidate[:, 0] = False
    if exclude is not None:
        rows, cols = _flatten_ids(exclude, batch, n_items, "exclude")
        candidate[rows, cols] = False
    masked = scores.masked_fill(~candidate, -math.inf)
    n_top = min(k, n_items)
    kth = masked.topk(n_top, dim=1).values[:, -1:]
    above = masked > kth  # non-candidates are -inf, so never strictly above
    tied = candidate & (masked == kth)
    free_slots = n_top - _count_true(above)
    in_top = above | tied
    crowded = (_count_true(tied) > free_slots).nonzero().squeeze(1)
    if crowded.numel():  # more ties than free slots: keep the lowest item ids
        sub = tied[crowded]
        rank_in_tie = sub.view(torch.uint8).cumsum(dim=1, dtype=torch.int32)
        keep = sub & (rank_in_tie <= free_slots[crowded].unsqueeze(1))
        in_top[crowded] = above[crowded] | keep
    f_rows, f_cols = _flatten_ids(futures, batch, n_items, "futures")
    hit_counts = torch.zeros(batch, dtype=torch.long)
    hit_counts.index_add_(0, f_rows, in_top[f_rows, f_cols].long())
    return hit_counts > 0
