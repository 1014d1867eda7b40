"""On-device scorer: the user's own recent items, public item attributes, DP global statistics.

Everything a device needs is either its own history (never leaves it), the public
catalogue (brand and categories of every item) or what was released under DP
(:mod:`common.privacy.statistics`), so its recommendations cost no privacy beyond
those releases. For one user with recent items ``i_1..i_n`` (most recent last), the
attribute profile is ``p = normalise(sum_k decay^(n-k) x(i_k))`` over the last
``window`` items, ``x(i)`` the 0/1 attribute vector of item ``i``, and item ``j`` scores

    log(transition_floor + p . T[:, j])            DP attribute-to-item transitions
    + similarity_weight * (p * idf) . x(j) / |x(j)|  own recent items, public attributes
    + popularity_weight * log(1 + pop[j])          DP popularity
    + model_weight * model_scores[j]               the global model, when one is shipped

with ``T`` the released transitions, negatives clamped and rows normalised to sum 1,
and ``idf`` the attributes' inverse document frequency in the public catalogue. The
settings are global (:class:`ScorerSettings`), chosen on validation data, never per
user. The same code scores a batch of users in evaluation and one user on a device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from torch import Tensor

from common.data.attributes import ItemAttributes
from common.privacy.statistics import DPStatistics


@dataclass(frozen=True)
class ScorerSettings:
    """Global weights of the on-device scorer (see the module docstring)."""

    window: int = 10
    decay: float = 0.8
    transition_floor: float = 1e-3
    similarity_weight: float = 2.0
    popularity_weight: float = 0.05
    model_weight: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an integer >= 1, got {self.window!r}")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay!r}")
        if not self.transition_floor > 0.0:
            raise ValueError(f"transition_floor must be > 0, got {self.transition_floor!r}")
        for name in ("similarity_weight", "popularity_weight", "model_weight"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")


def item_attribute_lists(
    mapping: Mapping[str, Sequence[int]], item_ids: Sequence[object]
) -> tuple[list[npt.NDArray[np.int64]], int]:
    """Attribute indices per item index (0 = padding, empty) and the number of attributes.

    ``mapping`` maps an original item id (as text) to its public attribute ids, as in
    ``*_item2attributes.json``; ``item_ids[i - 1]`` is the original id of item index ``i``.
    Attribute ids are renumbered densely in sorted order; items absent from ``mapping``
    have no attributes.
    """
    known = sorted({int(a) for attributes in mapping.values() for a in attributes})
    dense = {attribute: index for index, attribute in enumerate(known)}
    lists = [np.zeros(0, dtype=np.int64)]
    for item in item_ids:
        attributes = sorted({dense[int(a)] for a in mapping.get(str(item), ())})
        lists.append(np.asarray(attributes, dtype=np.int64))
    return lists, len(known)


def attribute_lists(attributes: ItemAttributes) -> tuple[list[npt.NDArray[np.int64]], int]:
    """Loaded item attributes (indices 1..n, 0 padding) as the scorer's 0-based lists per item."""
    lists = [
        np.asarray(attributes.of(item), dtype=np.int64) - 1
        for item in range(attributes.n_items + 1)
    ]
    return lists, attributes.n_attributes


def attribute_matrix(
    item_attributes: Sequence[npt.NDArray[np.int64]], n_attributes: int
) -> sp.csr_matrix:
    """Sparse 0/1 matrix of shape ``(n_items + 1, n_attributes)``."""
    lengths = [len(a) for a in item_attributes]
    rows = np.repeat(np.arange(len(item_attributes)), lengths)
    cols = np.concatenate(item_attributes) if rows.size else np.zeros(0, dtype=np.int64)
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(item_attributes), n_attributes))


def recent_item_weights(
    histories: Sequence[npt.NDArray[np.int64]], n_items: int, window: int, decay: float
) -> sp.csr_matrix:
    """Sparse ``(B, n_items + 1)`` weights ``decay^age`` of each user's last ``window`` items."""
    rows: list[npt.NDArray[np.int64]] = []
    cols: list[npt.NDArray[np.int64]] = []
    vals: list[npt.NDArray[np.float64]] = []
    for row, history in enumerate(histories):
        recent = np.asarray(history, dtype=np.int64).reshape(-1)
        recent = recent[recent > 0][-window:]
        rows.append(np.full(len(recent), row, dtype=np.int64))
        cols.append(recent)
        vals.append(decay ** np.arange(len(recent))[::-1].astype(np.float64))
    data = np.concatenate(vals) if vals else np.zeros(0)
    index = (np.concatenate(rows), np.concatenate(cols)) if rows else ([], [])
    return sp.csr_matrix((data, index), shape=(len(histories), n_items + 1))


class OnDeviceScorer:
    """Scores every item for users from their own history, public attributes and DP statistics."""

    def __init__(
        self,
        item_attributes: Sequence[npt.NDArray[np.int64]],
        n_attributes: int,
        popularity: npt.NDArray[np.floating],
        attribute_transitions: npt.NDArray[np.floating],
        settings: ScorerSettings,
    ) -> None:
        self.n_items = len(item_attributes) - 1
        if popularity.shape != (self.n_items + 1,):
            raise ValueError(
                f"popularity must have shape ({self.n_items + 1},), got {popularity.shape}"
            )
        if attribute_transitions.shape != (n_attributes, self.n_items + 1):
            raise ValueError(
                f"attribute_transitions must have shape ({n_attributes}, {self.n_items + 1}), "
                f"got {attribute_transitions.shape}"
            )
        self.settings = settings
        self.attributes = attribute_matrix(item_attributes, n_attributes)
        counts = np.asarray(self.attributes.sum(axis=0)).ravel()
        self.idf = np.log((self.n_items + 1) / (counts + 1.0)).astype(np.float32)
        sizes = np.asarray(self.attributes.sum(axis=1)).ravel()
        self.inverse_size = (1.0 / np.maximum(sizes, 1.0)).astype(np.float32)
        self.log_popularity = np.log1p(np.clip(popularity, 0.0, None)).astype(np.float32)
        clamped = np.clip(attribute_transitions, 0.0, None).astype(np.float32)
        self.transitions = clamped / np.maximum(clamped.sum(axis=1, keepdims=True), 1e-12)

    @classmethod
    def from_release(
        cls,
        stats: DPStatistics,
        item_attributes: Sequence[npt.NDArray[np.int64]],
        settings: ScorerSettings,
    ) -> OnDeviceScorer:
        """A scorer over released statistics and the public catalogue."""
        n_attributes = stats.attribute_transitions.shape[0]
        return cls(
            item_attributes, n_attributes, stats.popularity, stats.attribute_transitions, settings
        )

    def with_settings(self, settings: ScorerSettings) -> OnDeviceScorer:
        """The same release and catalogue under other settings (arrays shared, not copied):
        nothing the constructor precomputes depends on the settings."""
        other = copy.copy(self)
        other.settings = settings
        return other

    def profiles(self, histories: Sequence[npt.NDArray[np.int64]]) -> sp.csr_matrix:
        """Each user's recency-weighted attribute profile, rows summing to 1 (or all 0)."""
        weights = recent_item_weights(
            histories, self.n_items, self.settings.window, self.settings.decay
        )
        profile = sp.csr_matrix(weights @ self.attributes)
        totals = np.asarray(profile.sum(axis=1)).ravel()
        scale = np.where(totals > 0, 1.0 / np.maximum(totals, 1e-12), 0.0)
        return sp.csr_matrix(sp.diags(scale) @ profile)

    def batch_scores(
        self, histories: Sequence[npt.NDArray[np.int64]], model_scores: Tensor | None = None
    ) -> Tensor:
        """Scores ``(B, n_items + 1)`` float32 for a batch of users; column 0 is ``-inf``.

        ``model_scores`` (same shape) are the global model's scores, weighted by
        ``model_weight``. History items are NOT removed here (evaluation excludes them
        in ranking; :meth:`scores` removes them for a device).
        """
        settings = self.settings
        profile = self.profiles(histories)
        transition = np.asarray(profile @ self.transitions, dtype=np.float32)
        scores = np.log(transition + np.float32(settings.transition_floor))
        if settings.similarity_weight:
            weighted = sp.csr_matrix(profile.multiply(self.idf[None, :]))
            similarity = (weighted @ self.attributes.T).toarray().astype(np.float32)
            scores += np.float32(settings.similarity_weight) * similarity * self.inverse_size
        if settings.popularity_weight:
            scores += np.float32(settings.popularity_weight) * self.log_popularity
        result = torch.from_numpy(scores)
        if model_scores is not None and settings.model_weight:
            if tuple(model_scores.shape) != tuple(result.shape):
                raise ValueError(
                    f"model_scores must have shape {tuple(result.shape)}, "
                    f"got {tuple(model_scores.shape)}"
                )
            result += settings.model_weight * model_scores.to(torch.float32)
        result[:, 0] = -math.inf
        return result

    def scores(
        self, history_items: npt.ArrayLike, model_scores: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.float32]:
        """One user's scores ``(n_items + 1,)`` on a device; history items and padding ``-inf``."""
        history = np.asarray(history_items, dtype=np.int64).reshape(-1)
        if history.size and (history.min() < 0 or history.max() > self.n_items):
            raise ValueError(f"history items must be ids in 0..{self.n_items}")
        model = (
            None
            if model_scores is None
            else torch.as_tensor(np.asarray(model_scores)).reshape(1, -1)
        )
        row = self.batch_scores([history], model)[0].numpy()
        row[history] = -np.inf
        return row

    def top_k(self, history_items: npt.ArrayLike, k: int) -> npt.NDArray[np.int64]:
        """The ``k`` best items for one user (history excluded), best first; ties by lower id."""
        row = self.scores(history_items)
        order = np.lexsort((np.arange(len(row)), -row))
        return order[: min(k, int(np.isfinite(row).sum()))].astype(np.int64)
