"""Stand-alone model checkpoints: the weights plus what a device needs to use them.

A checkpoint file (``torch.save``, readable with ``weights_only=True``) is a dict:

- ``format``: :data:`CHECKPOINT_FORMAT`,
- ``round``: the federated round (or epoch) the weights belong to,
- ``state_dict``: the model's weights (with ``item-embedding`` other than ``free`` also the
  public item -> attribute map, ``items._extra_state``, so a device rebuilds the
  model from the checkpoint alone),
- ``model_config``: the :class:`~common.models.ModelConfig` fields,
- ``n_items``: catalogue size (model item indices 1..n_items, 0 = padding),
- ``item_ids``: the catalogue, original item ids in model-index order (index ``i`` is
  ``item_ids[i - 1]``),
- ``dataset``: name or path of the data set the catalogue came from,
- ``valid``: validation metrics of these weights (empty when not evaluated),
- ``ledger``: the run's privacy ledger heads when these weights left (entry count and
  last hash per file, :mod:`common.privacy.ledger_heads`; empty without a ledger),
- ``noise_witness``: under user-level DP, each round's noise witness (round -> 1-D
  float32 tensor of pure noise, scaled as that round's aggregate,
  :mod:`common.privacy.mechanism`), from which the audit measures the noise the rounds
  carried; empty without DP and in older checkpoints.

So a device can rebuild the model and map its own item ids without the server or the
data set. Older checkpoints (``{round, state_dict}`` from the federated server,
``{model_config, state_dict}`` from ``fedseqrec-train``) still load when the run's
``config.json`` lies beside them: the missing parts are rebuilt from it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data.loaders import dataset_log_format, load_dataset
from common.data.sequences import build_sequences
from common.models import ModelConfig, SequenceRecommender, build_model
from common.models.attribute_embedding import EXTRA_STATE
from common.storage.atomic import write_atomically

CHECKPOINT_FORMAT = 2
VALID_KEY = "simulation_only_valid"  # validation figures: a diagnostic, not a release
ATTRIBUTE_INDEX = f"items.{EXTRA_STATE}"  # the public item -> attribute map, if the model has one
ItemId = int | str


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit; the message names the file and why."""


@dataclass(frozen=True)
class Checkpoint:
    """Weights with their model config and catalogue (see the module docstring)."""

    round: int
    state_dict: Mapping[str, torch.Tensor]
    model_config: ModelConfig
    item_ids: Sequence[ItemId]
    dataset: str
    valid: Mapping[str, float] = field(default_factory=dict)
    ledger: Mapping[str, Any] = field(default_factory=dict)
    noise_witness: Mapping[int, torch.Tensor] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        """Catalogue size, excluding the padding index."""
        return len(self.item_ids)

    def build_model(self) -> SequenceRecommender:
        """The model with these weights loaded (training mode, as built)."""
        index = self.state_dict.get(ATTRIBUTE_INDEX)
        model = build_model(self.model_config, self.n_items, index)
        model.load_state_dict(self.state_dict)
        return model

    def to_dict(self) -> dict[str, Any]:
        """The dict written to disk."""
        return {
            "format": CHECKPOINT_FORMAT,
            "round": self.round,
            "state_dict": dict(self.state_dict),
            "model_config": dataclasses.asdict(self.model_config),
            "n_items": self.n_items,
            "item_ids": list(self.item_ids),
            "dataset": self.dataset,
            # computed by the measurement harness from every user's data: named so, since
            # the checkpoint is what a run releases (DESIGN.md: accounted or withheld)
            VALID_KEY: {key: float(value) for key, value in self.valid.items()},
            "ledger": {name: dict(head) for name, head in self.ledger.items()},
            "noise_witness": {int(r): values for r, values in self.noise_witness.items()},
        }


def dataset_item_ids(dataset: str, columns: str = "", time_unit: str = "") -> list[ItemId]:
    """Original item ids of a data set in model-index order (index i is ``ids[i - 1]``)."""
    log = load_dataset(dataset, dataset_log_format(dataset, columns, time_unit))
    item_ids: np.ndarray = build_sequences(log, name=dataset).item_ids
    return [value if isinstance(value, str) else int(value) for value in item_ids.tolist()]


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically (temporary file + rename), so a crash never leaves half a file."""
    write_atomically(path, lambda handle: torch.save(checkpoint.to_dict(), handle))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint (any format); a :class:`CheckpointError` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a foreign or damaged file
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise CheckpointError(f"{path}: not a fedseqrec checkpoint (no 'state_dict')")
    if "item_ids" not in raw:
        raw = _upgrade_legacy(path, raw)
    checkpoint = _checkpoint_of(path, raw)
    if "n_items" in raw and raw["n_items"] != checkpoint.n_items:
        raise CheckpointError(
            f"{path}: n_items {raw['n_items']!r} does not match its catalogue of "
            f"{checkpoint.n_items} item ids"
        )
    if len(set(checkpoint.item_ids)) != checkpoint.n_items:
        raise CheckpointError(f"{path}: malformed checkpoint (its catalogue repeats item ids)")
    _check_weights_fit(path, checkpoint)
    _check_weights_finite(path, checkpoint)
    return checkpoint


def _checkpoint_of(path: Path, raw: dict[str, Any]) -> Checkpoint:
    """The fields of a checkpoint dict, typed; a CheckpointError names a bad one."""
    try:
        if not isinstance(raw["state_dict"], Mapping):
            raise TypeError("'state_dict' is not a mapping of names to tensors")
        return Checkpoint(
            round=int(raw.get("round", 0)),
            state_dict=raw["state_dict"],
            model_config=ModelConfig(**raw["model_config"]),
            item_ids=list(raw["item_ids"]),
            dataset=str(raw.get("dataset", "")),
            valid=dict(raw.get(VALID_KEY, raw.get("valid", {}))),  # "valid": older files
            ledger=dict(raw.get("ledger", {})),
            noise_witness=dict(raw.get("noise_witness", {})),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: malformed checkpoint ({error})") from None


def _upgrade_legacy(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """Fill model config and catalogue of an older checkpoint from its run's config.json."""
    config_path = path.parent / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{path}: an older checkpoint without model config and catalogue, and no "
            f"config.json of its run beside it to rebuild them from; re-save it with a "
            f"current version"
        )
    try:
        settings = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_path}: not a readable run config ({error})") from None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{config_path}: must hold a JSON object")
    if "run_config" in settings:  # a federated run folder (simulations.launch)
        from common.federation.config import FederatedConfig

        try:
            federated = FederatedConfig.from_run_config(settings["run_config"])
        except ValueError as error:
            raise CheckpointError(f"{config_path}: {error}") from None
        model_config: Any = dataclasses.asdict(federated.model_config())
        dataset: Any = federated.dataset
    else:  # a centralized run folder (fedseqrec-train): the model config is in the file
        model_config, dataset = raw.get("model_config"), settings.get("dataset")
    if not model_config or not dataset:
        raise CheckpointError(f"{config_path}: names no model config or data set")
    try:
        item_ids = dataset_item_ids(str(dataset))
    except ValueError as error:
        raise CheckpointError(f"{path}: cannot rebuild the catalogue: {error}") from None
    return {**raw, "model_config": model_config, "item_ids": item_ids, "dataset": dataset}


def _check_weights_fit(path: Path, checkpoint: Checkpoint) -> None:
    """The weights must load into the model their config and catalogue describe."""
    try:
        checkpoint.build_model()
    except (RuntimeError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: weights do not fit a {checkpoint.model_config.name} model of "
            f"{checkpoint.n_items} items ({first})"
        ) from None


def _check_weights_finite(path: Path, checkpoint: Checkpoint) -> None:
    """Every weight is a finite number: NaN or inf would score every item NaN, silently."""
    for name, tensor in checkpoint.state_dict.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s) out of "
                f"{tensor.numel()}; these weights cannot score items"
            )


def check_compatible(
    checkpoint: Checkpoint, model_config: ModelConfig, item_ids: Sequence[ItemId], source: str
) -> None:
    """Refuse a checkpoint whose model or catalogue differ from a run's (``source`` names it)."""
    ours, theirs = dataclasses.asdict(model_config), dataclasses.asdict(checkpoint.model_config)
    differences = [
        f"{key} {theirs[key]!r} (checkpoint) vs {ours[key]!r} (run)"
        for key in ours
        if ours[key] != theirs[key]
    ]
    if differences:
        raise CheckpointError(f"{source}: model config differs: {', '.join(differences)}")
    if checkpoint.n_items != len(item_ids):
        raise CheckpointError(
            f"{source}: catalogue size differs: {checkpoint.n_items} items in the checkpoint, "
            f"{len(item_ids)} in the data set"
        )
    for index, (old, new) in enumerate(zip(checkpoint.item_ids, item_ids, strict=True), 1):
        if old != new:
            raise CheckpointError(
                f"{source}: catalogue differs: item index {index} is {old!r} in the "
                f"checkpoint but {new!r} in the data set"
            )


def load_initial_checkpoint(
    path: str, model_config: ModelConfig, item_ids: Sequence[ItemId]
) -> Checkpoint:
    """The checkpoint a run continues from (``initial-checkpoint``), checked against it."""
    source = f"initial-checkpoint {path}"
    if not Path(path).is_absolute():
        raise CheckpointError(f"{source}: must be an absolute path")
    checkpoint = load_checkpoint(Path(path))
    check_compatible(checkpoint, model_config, item_ids, source)
    return checkpoint
