"""The released statistics and scorer settings as they travel to a deployment's nodes.

In a deployment the server holds no user data, so the figures of a run that released DP
global statistics come from the nodes, each scoring its own users with the on-device
scorer (:mod:`common.evaluation.on_device`) as their devices would. Every evaluation
message then carries, next to the model, the released ``popularity`` and
``attribute_transitions`` (ArrayRecord :data:`SCORER_ARRAYS`, exactly what
``statistics.npz`` holds, already public) and the ``scorer.json`` settings (ConfigRecord
:data:`SCORER_CONFIG`). The node adds its own copy of the public item attributes.
Messages without them are scored by the model alone, as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from common.evaluation.on_device import OnDeviceScorer, ScorerSettings
from common.privacy.statistics import DPStatistics

SCORER_ARRAYS = "scorer-statistics"  # ArrayRecord: the released statistics
SCORER_CONFIG = "scorer-settings"  # ConfigRecord: the ScorerSettings fields
RELEASED = ("popularity", "attribute_transitions")


@dataclass(frozen=True)
class ScorerRelease:
    """What a node needs, besides the public attributes, to score as a device does."""

    popularity: npt.NDArray[np.float32]
    attribute_transitions: npt.NDArray[np.float32]
    settings: ScorerSettings

    @classmethod
    def of(cls, stats: DPStatistics, settings: ScorerSettings) -> ScorerRelease:
        """The released statistics (witnesses stay in the run folder) and the settings."""
        return cls(stats.popularity, stats.attribute_transitions, settings)

    def attach(self, content: RecordDict) -> None:
        """Add the statistics and settings to an evaluation message's content."""
        content[SCORER_ARRAYS] = ArrayRecord(
            {
                RELEASED[0]: Array(np.ascontiguousarray(self.popularity, dtype=np.float32)),
                RELEASED[1]: Array(
                    np.ascontiguousarray(self.attribute_transitions, dtype=np.float32)
                ),
            }
        )
        content[SCORER_CONFIG] = ConfigRecord(dataclasses.asdict(self.settings))  # type: ignore[arg-type]

    @classmethod
    def received(cls, content: RecordDict) -> ScorerRelease | None:
        """The release a message carries; None without one; ValueError naming a bad field."""
        arrays = content.array_records.get(SCORER_ARRAYS)
        config = content.config_records.get(SCORER_CONFIG)
        if arrays is None and config is None:
            return None
        if arrays is None or config is None:
            raise ValueError(
                f"the evaluation message carries {SCORER_ARRAYS!r} and {SCORER_CONFIG!r} "
                "only together; one is missing"
            )
        if set(arrays) != set(RELEASED):
            raise ValueError(f"{SCORER_ARRAYS!r}: arrays {sorted(arrays)}, expected {RELEASED}")
        values = [arrays[name].numpy().astype(np.float32) for name in RELEASED]
        for name, value in zip(RELEASED, values, strict=True):
            if not np.isfinite(value).all():
                raise ValueError(f"{SCORER_ARRAYS!r}: {name!r} holds non-finite values")
        try:
            settings = ScorerSettings(**dict(config))  # type: ignore[arg-type]
        except (TypeError, ValueError) as error:
            raise ValueError(f"{SCORER_CONFIG!r}: {error}") from None
        return cls(values[0], values[1], settings)

    def scorer(
        self, item_attributes: Sequence[npt.NDArray[np.int64]], n_attributes: int
    ) -> OnDeviceScorer:
        """The on-device scorer over the node's public attributes; a mismatch names both."""
        try:
            return OnDeviceScorer(
                item_attributes,
                n_attributes,
                self.popularity,
                self.attribute_transitions,
                self.settings,
            )
        except ValueError as error:
            raise ValueError(
                f"the released statistics do not fit this node's item attributes "
                f"({n_attributes} attributes, {len(item_attributes) - 1} items): {error}; "
                "the node needs the run's public attribute file (node config 'item-attributes')"
            ) from None
