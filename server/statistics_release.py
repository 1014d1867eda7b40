"""The run's DP global statistics: one query to every client, one noisy sum, one ledger entry.

With ``statistics = true`` the server asks every Flower client, before any training
round, for the summed contributions of its users (:mod:`client.statistics_reply`),
adds the replies up, adds Gaussian noise (``dp = "user"``; secret,
:mod:`common.privacy.randomness`) and records the release in the server ledger
(mechanism ``dp-statistics``, ``round`` = the run's first round number minus one)
BEFORE the statistics are written where devices and the scorer read them. Every user
takes part (no sampling): the joint release is one Gaussian mechanism
(:func:`common.privacy.statistics.joint_noise_multiplier`).

The release is computed in memory, recorded, and only then written (atomically: a
temporary file renamed), so nothing released exists under any name before its entry
(:func:`publish_statistics`). A run resumed after a crash reuses the statistics its
ledger recorded; a recorded release whose file is missing is refused, never drawn again
(it may have left before the file was lost: a second draw would spend the budget twice).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from common.data.attributes import load_item_attributes
from common.evaluation.on_device import OnDeviceScorer, attribute_lists
from common.evaluation.scorer_files import write_scorer_settings
from common.federation.config import FederatedConfig
from common.federation.messages import (
    ARRAYS,
    CONFIG,
    METRICS,
    POPULARITY,
    STAGE,
    TEST_STAGE,
    TRANSITION_CELLS,
    TRANSITION_VALUES,
    TRANSITIONS_PER_USER,
    USERS,
    VALID_STAGE,
)
from common.federation.reliability import required_replies
from common.federation.statistics_config import scorer_settings
from common.privacy.randomness import PrivacyRandomness, privacy_randomness
from common.privacy.statistics import STATISTICS, STATISTICS_FILE, DPStatistics, noisy_release
from server.fault_tolerance import TooFewRepliesError, short_reason
from server.user_level_privacy import UserLevelPrivacy

logger = logging.getLogger("fedseqrec.server")
detail = logging.getLogger("fedseqrec.server.detail")  # per node: the run log only

NOISE_SALT = 0x57A7  # insecure-reproducible-noise only: the statistics' own stream


def release_statistics_round(
    grid: Grid,
    config: FederatedConfig,
    item_ids: list[object],
    catalogue: dict[str, bytes],
    privacy: UserLevelPrivacy | None,
    round_offset: int,
    num_nodes: int,
    simulated: bool = True,
) -> dict[str, OnDeviceScorer]:
    """Query every client, sum, privatize, record, save; the scorer per evaluation stage.

    The release is made from every user's history but the held-out test item (the test
    stage's input); it scores the test figures and devices. A simulation also builds,
    for its validation figures only, a release from the training sequences with noise of
    the same scale (a simulation-only diagnostic: it never leaves the harness, which
    reads every user's data anyway, so it is not ledgered).
    """
    started = time.perf_counter()
    folder = Path(config.results_dir)
    attributes = load_item_attributes(config.item_attributes, item_ids, config.dataset)
    if attributes is None:
        raise ValueError("statistics = true needs item-attributes")
    lists, n_attributes = attribute_lists(attributes)
    multipliers = privacy.statistics_multipliers if privacy else dict.fromkeys(STATISTICS, 0.0)
    query = _Query(grid, config, catalogue, (n_attributes, len(lists)), num_nodes)
    stats = _recorded_release(folder, privacy)
    if stats is None:
        seed = (config.seed, round_offset, NOISE_SALT)
        randomness = privacy_randomness(config.insecure_reproducible_noise, *seed)
        stats = noisy_release(*query.sums(TEST_STAGE), multipliers, randomness)  # in memory
        publish_statistics(folder, stats, privacy, round_offset)
    settings = scorer_settings(config)
    write_scorer_settings(folder, settings, config.item_attributes, config.dataset)
    logger.info("statistics released in %.1fs: %s", time.perf_counter() - started, _describe(stats))
    scorers = {TEST_STAGE: OnDeviceScorer.from_release(stats, lists, settings)}
    if simulated:
        started = time.perf_counter()
        harness = noisy_release(*query.sums(VALID_STAGE), multipliers, PrivacyRandomness())
        scorers[VALID_STAGE] = OnDeviceScorer.from_release(harness, lists, settings)
        logger.info(
            "validation statistics (simulation only) in %.1fs", time.perf_counter() - started
        )
    return scorers


def publish_statistics(
    folder: Path, stats: DPStatistics, privacy: UserLevelPrivacy | None, numbered_round: int
) -> None:
    """Record the release in the ledger, then write ``statistics.npz`` atomically.

    The ledger first: a crash in between leaves an entry without a file (budget spent,
    nothing released), never a file without its entry, under any name.
    """
    if privacy is not None:
        privacy.record_statistics(numbered_round)
    stats.save(folder / STATISTICS_FILE)


def _recorded_release(folder: Path, privacy: UserLevelPrivacy | None) -> DPStatistics | None:
    """The statistics a resumed run already released (recorded in its ledger), else None."""
    recorded = privacy is not None and privacy.statistics_recorded()
    released = folder / STATISTICS_FILE
    if released.is_file() and (privacy is None or recorded):
        return DPStatistics.load(released)
    if recorded:
        raise RuntimeError(
            f"the server ledger records this run's statistics release, but {released} is "
            "missing (the run stopped between the entry and the file, or the file was "
            "removed): releasing them again would spend the budget twice; start a new run"
        )
    return None


@dataclass(frozen=True)
class _Query:
    """The statistics query to every client of the run."""

    grid: Grid
    config: FederatedConfig
    catalogue: dict[str, bytes]
    shape: tuple[int, int]  # (attributes, items + 1)
    num_nodes: int

    def sums(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """Every client's summed contributions at ``stage``, added up: (popularity, transitions)."""
        config, (n_attributes, n_rows) = self.config, self.shape
        nodes, _ = sample_nodes(self.grid, self.num_nodes, self.num_nodes)  # waits for all
        settings = ConfigRecord(
            {STAGE: stage, TRANSITIONS_PER_USER: config.transitions_per_user, **self.catalogue}
        )
        messages = [
            Message(
                content=RecordDict({CONFIG: settings}),
                dst_node_id=node,
                message_type=MessageType.QUERY,
            )
            for node in nodes
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=config.round_timeout))
        popularity = np.zeros(n_rows)
        transitions = np.zeros(n_attributes * n_rows)
        problems = [
            f"node {reply.metadata.src_node_id}: {short_reason(problem)}"
            for reply in replies
            if (problem := _add_reply(reply, popularity, transitions))
        ]
        for problem in problems:
            detail.warning("statistics reply refused: %s", problem)
        valid, needed = (
            len(replies) - len(problems),
            required_replies(config.min_replies, len(nodes)),
        )
        if valid < needed:
            raise TooFewRepliesError(
                f"statistics: {valid} valid replies of {len(nodes)} clients asked, min-replies "
                f"{config.min_replies:g} needs {needed} ({len(nodes) - len(replies)} did not "
                f"reply; {'; '.join(problems[:3]) or 'no other problem'})"
            )
        return popularity, transitions.reshape(n_attributes, n_rows)


def _add_reply(reply: Message, popularity: np.ndarray, transitions: np.ndarray) -> str:
    """Add one client's sums in place; why it was refused instead ('' when added)."""
    if reply.has_error():
        return reply.error.reason or f"error {reply.error.code}"
    arrays = reply.content.array_records.get(ARRAYS)
    metrics = reply.content.metric_records.get(METRICS)
    if not isinstance(arrays, ArrayRecord) or metrics is None or USERS not in metrics:
        return f"it lacks the {ARRAYS!r} arrays or the {USERS!r} count"
    if set(arrays) != {POPULARITY, TRANSITION_CELLS, TRANSITION_VALUES}:
        return f"arrays {sorted(arrays)} are not the statistics' {POPULARITY}, cells, values"
    counts = arrays[POPULARITY].numpy()
    cells = arrays[TRANSITION_CELLS].numpy()
    values = arrays[TRANSITION_VALUES].numpy()
    if counts.shape != popularity.shape:
        return f"popularity has shape {counts.shape}, the catalogue needs {popularity.shape}"
    if cells.ndim != 1 or cells.shape != values.shape or cells.dtype.kind not in "iu":
        return "transition cells and values must be two 1-D arrays of one length (cells integer)"
    if len(cells) and (cells.min() < 0 or cells.max() >= len(transitions)):
        return f"transition cells outside 0..{len(transitions) - 1}"
    if len(np.unique(cells)) != len(cells):
        return "transition cells repeat"
    if not (np.isfinite(counts).all() and np.isfinite(values).all()):
        return "non-finite values"
    popularity += counts
    transitions[cells] += values
    return ""


def _describe(stats: DPStatistics) -> str:
    """One line: the noise of each statistic (0 = exact)."""
    return ", ".join(f"{name} noise {stats.noise_multipliers[name]:.4g}" for name in STATISTICS)
