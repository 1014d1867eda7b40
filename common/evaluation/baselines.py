"""Trivial baselines of the evaluation protocol: item popularity and a first-order Markov chain.

Both score all ``n_items + 1`` columns like a neural model (column 0 is padding and
gets ``-inf``), so they go through exactly the same ranking code. Padding ids (0)
inside training sequences are dropped before counting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor


def _clean_sequences(
    sequences: Sequence[npt.ArrayLike], n_items: int
) -> list[npt.NDArray[np.int64]]:
    """Validate item-id sequences and return them as int64 arrays without padding."""
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"n_items must be a positive int, got {n_items!r}")
    cleaned: list[npt.NDArray[np.int64]] = []
    for i, seq in enumerate(sequences):
        arr = np.asarray(seq).reshape(-1)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"sequence {i} must hold integer item ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > n_items):
            raise ValueError(f"sequence {i} holds ids outside 0..{n_items}")
        cleaned.append(arr[arr != 0])
    return cleaned


def _item_counts(sequences: Sequence[npt.NDArray[np.int64]], n_items: int) -> npt.NDArray[np.int64]:
    """Interaction count per item id (index 0 stays 0) over cleaned sequences."""
    flat = np.concatenate(sequences) if sequences else np.empty(0, dtype=np.int64)
    return np.bincount(flat, minlength=n_items + 1).astype(np.int64)


def popularity_scores(sequences: Sequence[npt.ArrayLike], n_items: int) -> npt.NDArray[np.float64]:
    """Interaction counts per item over ``sequences``, shape ``(n_items + 1,)``, float64.

    Column 0 (padding) is ``-inf`` so it can never be recommended.
    """
    counts = _item_counts(_clean_sequences(sequences, n_items), n_items)
    scores = counts.astype(np.float64)
    scores[0] = -np.inf
    return scores


def _check_last_items(last_items: npt.ArrayLike, n_items: int) -> npt.NDArray[np.int64]:
    """Validate a 1-D array of last item ids in ``0..n_items`` (0 = empty history)."""
    arr = np.asarray(last_items)
    if arr.ndim != 1:
        raise ValueError(f"last_items must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"last_items must hold integer item ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > n_items):
        raise ValueError(f"last_items must be ids in 0..{n_items}")
    return arr


class PopularityBaseline:
    """Recommends the globally most popular items, whatever the user's history."""

    def __init__(self) -> None:
        self.n_items: int | None = None
        self.popularity: npt.NDArray[np.float64] | None = None

    def fit(self, sequences: Sequence[npt.ArrayLike], n_items: int) -> PopularityBaseline:
        """Count item interactions over the training sequences; returns ``self``."""
        self.popularity = popularity_scores(sequences, n_items)
        self.n_items = n_items
        return self

    def scores(self, last_items: npt.ArrayLike) -> Tensor:
        """Popularity row repeated per user, shape ``(B, n_items + 1)`` float64.

        ``last_items`` is only used for the batch size (kept for API uniformity).
        """
        if self.popularity is None or self.n_items is None:
            raise RuntimeError("PopularityBaseline.scores called before fit()")
        last = _check_last_items(last_items, self.n_items)
        row = torch.from_numpy(self.popularity)
        return row.unsqueeze(0).repeat(last.shape[0], 1)


class MarkovChain:
    """First-order Markov chain over consecutive items, with popularity tie-breaking.

    Transitions are stored sparsely in CSR form: for source item ``a`` the targets
    are ``next_items[indptr[a]:indptr[a + 1]]`` (sorted) with counts
    ``next_counts[...]``. Memory is O(number of distinct transitions).
    """

    def __init__(self) -> None:
        self.n_items: int | None = None
        self.item_counts: npt.NDArray[np.int64] | None = None
        self.indptr: npt.NDArray[np.int64] | None = None
        self.next_items: npt.NDArray[np.int64] | None = None
        self.next_counts: npt.NDArray[np.int64] | None = None

    def fit(self, sequences: Sequence[npt.ArrayLike], n_items: int) -> MarkovChain:
        """Count transitions ``a -> b`` between consecutive items of each sequence.

        Transitions never cross sequence boundaries. Returns ``self``.
        """
        cleaned = _clean_sequences(sequences, n_items)
        sources = [seq[:-1] for seq in cleaned]
        targets = [seq[1:] for seq in cleaned]
        src = np.concatenate(sources) if sources else np.empty(0, dtype=np.int64)
        dst = np.concatenate(targets) if targets else np.empty(0, dtype=np.int64)
        keys, counts = np.unique(src * (n_items + 1) + dst, return_counts=True)
        from_items, to_items = np.divmod(keys, n_items + 1)
        self.indptr = np.concatenate(
            ([0], np.cumsum(np.bincount(from_items, minlength=n_items + 1)))
        ).astype(np.int64)
        self.next_items = to_items.astype(np.int64)
        self.next_counts = counts.astype(np.int64)
        self.item_counts = _item_counts(cleaned, n_items)
        self.n_items = n_items
        return self

    def transition_counts(self, item: int) -> npt.NDArray[np.int64]:
        """Dense transition counts out of ``item``, shape ``(n_items + 1,)``."""
        if (
            self.n_items is None
            or self.indptr is None
            or self.next_items is None
            or self.next_counts is None
        ):
            raise RuntimeError("MarkovChain.transition_counts called before fit()")
        n_items = self.n_items
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise ValueError(f"item must be an int, got {item!r}")
        if not 0 <= item <= n_items:
            raise ValueError(f"item must be in 0..{n_items}, got {item}")
        row = np.zeros(n_items + 1, dtype=np.int64)
        lo, hi = self.indptr[item], self.indptr[item + 1]
        row[self.next_items[lo:hi]] = self.next_counts[lo:hi]
        return row

    def scores(self, last_items: npt.ArrayLike) -> Tensor:
        """Next-item scores, shape ``(B, n_items + 1)`` float64.

        ``score[b, j] = count(last_items[b] -> j) + pop[j] / (max(pop) + 1)``: the
        popularity term is < 1, so it only breaks ties between equal transition
        counts. Last item 0 (empty history) has no transitions, giving pure
        popularity. Column 0 is ``-inf``.
        """
        if (
            self.n_items is None
            or self.item_counts is None
            or self.indptr is None
            or self.next_items is None
            or self.next_counts is None
        ):
            raise RuntimeError("MarkovChain.scores called before fit()")
        last = _check_last_items(last_items, self.n_items)
        tie_break = self.item_counts / (float(self.item_counts.max()) + 1.0)
        scores = np.repeat(tie_break[None, :], last.shape[0], axis=0)
        starts, ends = self.indptr[last], self.indptr[last + 1]
        lengths = ends - starts
        # Flat positions of every stored transition out of each row's last item.
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        positions = offsets + np.arange(int(lengths.sum()))
        rows = np.repeat(np.arange(last.shape[0]), lengths)
        scores[rows, self.next_items[positions]] += self.next_counts[positions]
        scores[:, 0] = -np.inf
        return torch.from_numpy(scores)
