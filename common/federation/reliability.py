"""Run-config choices and checks for failures: fault injection, reply screening, robust aggregation.

The keys (docs/reference.md, docs/simulations.md "Failures"):

- ``fault-rate``, ``fault-kind``, ``fault-seed``: simulated clients that fail on purpose
  (:mod:`client.fault_injection`), chosen from the seed, the round and the partition id;
- ``round-timeout``: seconds the server waits for a round's replies (Flower's default
  is 3600);
- ``min-replies``: valid replies a round needs to be aggregated, a share in (0, 1) of the
  clients asked or a whole count >= 1;
- ``round-retries``: how many times a round short of ``min-replies`` asks its failed
  clients again before the run stops (:class:`server.fault_tolerance.ReplyScreening`);
- ``validate-updates``, ``max-update-norm``: the server's checks of every reply
  (:mod:`server.update_validation`);
- robust ``strategy`` choices and their settings (``byzantine-clients``,
  ``trimmed-beta``, ``krum-select``), built from Flower's own classes.
"""

from __future__ import annotations

import math
from typing import Any

FAULT_KINDS = ("crash", "hang", "error", "nan", "scale")
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
MAX_ROUND_RETRIES = 100  # each retry may wait a whole round-timeout


def check_reliability(config: Any) -> None:
    """The failure and robustness keys of a ``FederatedConfig``, one clear error each."""
    if not 0.0 <= config.fault_rate < 1.0:
        raise ValueError(f"fault-rate must be in [0, 1), got {config.fault_rate}")
    if config.fault_kind not in FAULT_KINDS:
        raise ValueError(
            f"fault-kind must be one of {', '.join(FAULT_KINDS)}, got {config.fault_kind!r}"
        )
    if config.fault_rate > 0 and (config.deployment_nodes or config.secure_aggregation):
        raise ValueError(
            "fault-rate is a simulation setting: not with deployment-nodes or secure-aggregation"
        )
    if (
        config.fault_rate > 0
        and config.fault_kind in ("nan", "scale")
        and (config.update_compression != "none")
    ):
        raise ValueError("fault-kind nan and scale corrupt plain updates: not with "
                         "update-compression")  # fmt: skip
    if not (math.isfinite(config.round_timeout) and config.round_timeout > 0):
        raise ValueError(f"round-timeout must be a positive number of seconds, got "
                         f"{config.round_timeout}")  # fmt: skip
    _check_min_replies(config.min_replies)
    if not 0 <= config.round_retries <= MAX_ROUND_RETRIES:
        raise ValueError(f"round-retries must be in [0, {MAX_ROUND_RETRIES}], got "
                         f"{config.round_retries}")  # fmt: skip
    if not (math.isfinite(config.max_update_norm) and config.max_update_norm >= 0):
        raise ValueError(f"max-update-norm must be >= 0 (0 = off), got {config.max_update_norm}")
    if config.byzantine_clients < 0 or config.krum_select < 1:
        raise ValueError("byzantine-clients must be >= 0 and krum-select >= 1")
    if not 0.0 <= config.trimmed_beta < 0.5:
        raise ValueError(f"trimmed-beta must be in [0, 0.5), got {config.trimmed_beta}")
    if config.strategy in ROBUST_STRATEGIES and config.partition_mode == "cohort":
        raise ValueError(
            f"strategy {config.strategy!r} combines per-client updates robustly, but a cohort "
            "replies one sum of its users' updates (and with dp = 'user' the server sees "
            "only one noisy sum): use partition-mode cross-device or cross-silo, or fedavg "
            "with cohorts (each user's update is clipped there)"
        )


def _check_min_replies(min_replies: float) -> None:
    """A share in (0, 1) or a whole count >= 1."""
    share = 0.0 < min_replies < 1.0
    count = min_replies >= 1.0 and float(min_replies).is_integer()
    if not (share or count):
        raise ValueError(
            "min-replies must be a share in (0, 1) of the clients asked or a whole count "
            f">= 1, got {min_replies}"
        )


def required_replies(min_replies: float, asked: int) -> int:
    """Valid replies a round of ``asked`` clients needs: a share rounded up, or the count.

    A count above ``asked`` asks for all of them (a small federation, a late round).
    """
    if asked <= 0:
        return 0
    if min_replies < 1.0:
        return max(math.ceil(min_replies * asked - 1e-9), 1)
    return min(int(min_replies), asked)
