"""Seeded noise, recognised from the released model whatever the ledger says.

The test setting ``insecure-reproducible-noise`` draws the server's noise from the run's
``seed`` (:func:`common.privacy.randomness.server_noise_source`), so anyone holding the
config can regenerate and subtract it. A run relabelled ``os-entropy`` in its ledger and
config would otherwise pass: the audit therefore replays, for the first round whose noise
witness the released checkpoint carries, the draws the seeded source would have made
(every model array's noise in the aggregation's order, then the witness) and fails the
run as NOT PRIVATE when the witness is exactly that. Secret noise matches with
probability zero; a seed other than the config's is not tried (nobody can try them all).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.privacy.ledger import read_ledger_file
from common.privacy.ledger_heads import LEDGER_FOLDER, SERVER_LEDGER, read_json_object
from common.privacy.mechanism import GaussianMechanism
from common.privacy.randomness import server_noise_source

CHECKPOINT = "checkpoint.pt"
MODEL_MECHANISM = "dp-fedavg"


def seeded_noise_failures(run: Path) -> list[str]:
    """``[NOT PRIVATE ...]`` when the released witness is the config seed's noise, else []."""
    config, offset = _config_and_offset(run)
    seed = config.get("seed")
    path, ledger = run / CHECKPOINT, run / LEDGER_FOLDER / SERVER_LEDGER
    if not isinstance(seed, int) or not path.is_file() or not ledger.is_file():
        return []
    import torch

    raw = torch.load(path, map_location="cpu", weights_only=True)
    witnesses: Mapping[Any, Any] = raw.get("noise_witness") or {} if isinstance(raw, dict) else {}
    entries = {
        e.round: e
        for e in read_ledger_file(ledger).entries
        if e.mechanism == MODEL_MECHANISM and e.round in witnesses and e.noise_multiplier > 0
    }
    if not entries:
        return []
    first = min(entries)
    entry, witness = entries[first], np.asarray(witnesses[first], dtype=np.float32)
    shapes = _aggregated_shapes(path)
    replay = replayed_witness(seed, offset, first - offset, shapes, entry, witness.size)
    if not np.allclose(witness, replay, rtol=1e-4, atol=1e-9):
        return []
    return [
        f"NOT PRIVATE: {path}: round {first}'s noise witness is exactly the noise that seed "
        f"{seed} regenerates: this run's noise was seeded (insecure-reproducible), whatever "
        f"its ledger and config say, and anyone can subtract it"
    ]


def replayed_witness(
    seed: int, offset: int, flower_round: int, shapes: list[tuple[int, ...]], entry: Any,
    size: int,
) -> np.ndarray:  # fmt: skip
    """The witness the seeded server source would have drawn for ``flower_round``."""
    randomness = server_noise_source(True, seed, offset)(flower_round)
    std = entry.noise_multiplier * entry.clip_norm
    for shape in shapes:  # the model's noise comes first, array by array
        GaussianMechanism(std, randomness).noise(shape)
    expected_users = entry.population * entry.sampling_rate
    witness = GaussianMechanism(std, randomness).witness(size)
    return witness / np.float32(expected_users or 1.0)


def _aggregated_shapes(path: Path) -> list[tuple[int, ...]]:
    """The shapes of the arrays the server noised, in its order (the model's parameters)."""
    from common.federation.checkpoints import load_checkpoint
    from common.federation.messages import model_to_arrays

    arrays = model_to_arrays(load_checkpoint(path).build_model())
    return [tuple(arrays[name].shape) for name in arrays]


def _config_and_offset(run: Path) -> tuple[dict[str, Any], int]:
    """The run config (summary, else config.json) and the round it continued from."""
    summary = read_json_object(run / "summary.json") if (run / "summary.json").is_file() else {}
    config = summary.get("config")
    if not isinstance(config, dict) and (run / "config.json").is_file():
        config = read_json_object(run / "config.json").get("run_config")
    started = summary.get("started_from")
    offset = int(started.get("round", 0)) if isinstance(started, dict) else 0
    return (config if isinstance(config, dict) else {}), offset
