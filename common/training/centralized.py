"""Centralized training: the reference every federated and private run is held against."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from common.config.field_types import check_field_types, check_seed
from common.data.features import TrainingWindows, prefix_windows, training_windows
from common.data.sequences import LeaveOneOutSplit
from common.evaluation.scoring import evaluate_model
from common.models import ModelConfig, SequenceRecommender, build_model, next_item_loss

logger = logging.getLogger(__name__)

SELECTION_METRIC = "ndcg@10"
OPTIMIZERS = ("adam", "adamw")
WINDOWS = {"sequence": training_windows, "prefix": prefix_windows}
LOSS_WEIGHTINGS = ("position", "window")
BATCHINGS = ("length", "random")
PASS_POSITIONS = 1024  # a pass's fixed cost in padded positions, for cutting random batches


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of a centralized run.

    ``optimizer="adam"`` adds ``weight_decay`` as an L2 term to every gradient;
    ``"adamw"`` decays weights directly (decoupled), matrices and embeddings only, never
    biases or layer-norm gains. ``label_smoothing`` changes the training loss only;
    evaluation and checkpoint selection are unaffected. ``device`` is where the model
    trains (``cpu``, ``cuda``, ``cuda:1``); evaluation runs there too. ``windows`` says
    how sequences become examples: ``sequence`` (a target at every position of each
    window) or ``prefix`` (one window per target, predicted from the last position, as
    at evaluation; :func:`common.data.features.prefix_windows`). ``loss_weighting``:
    ``position`` (every target position alike: a long window weighs more) or ``window``
    (every window alike, the mean over its positions; a federated round of per-user
    updates weighs its users so). ``batching``: ``length`` (windows of similar length
    batched together, so a batch drops the padding no row uses) or ``random`` (every
    batch a uniform random draw, as a federated round samples its users; computed as
    length-sorted parts whose gradients add up, :func:`random_batch_parts`, so padding
    costs little). ``beta2``: Adam's second-moment decay (Flower's FedAdam: 0.99).
    """

    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    eval_every: int = 1
    seed: int = 42
    lr_patience: int = 0
    lr_factor: float = 0.3
    optimizer: str = "adam"
    label_smoothing: float = 0.0
    device: str = "cpu"
    windows: str = "sequence"
    loss_weighting: str = "position"
    batching: str = "length"
    beta2: float = 0.999

    def __post_init__(self) -> None:
        check_field_types(self)
        check_seed(self.seed)
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("epochs, batch_size and eval_every must be positive")
        if self.lr <= 0 or self.weight_decay < 0 or self.patience < 1:
            raise ValueError("lr must be > 0, weight_decay >= 0 and patience >= 1")
        if self.lr_patience < 0 or not 0.0 < self.lr_factor < 1.0:
            raise ValueError("lr_patience must be >= 0 (0 = off) and lr_factor in (0, 1)")
        if not 0.0 < self.beta2 < 1.0:
            raise ValueError(f"beta2 must be in (0, 1), got {self.beta2}")
        choices = {"optimizer": OPTIMIZERS, "windows": WINDOWS,
                   "loss_weighting": LOSS_WEIGHTINGS, "batching": BATCHINGS}  # fmt: skip
        for name, allowed in choices.items():  # as FederatedConfig checks its choices
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device must be like cpu or cuda:0, got {self.device!r}") from None

    def torch_device(self) -> torch.device:
        """The training device; asking for CUDA where there is none is a ValueError."""
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but CUDA is not available")
        return device


@dataclass
class EpochRecord:
    """What one epoch did: loss, time and (when evaluated) validation metrics."""

    epoch: int
    train_loss: float
    seconds: float
    lr: float
    valid: dict[str, float] = field(default_factory=dict)


def length_bucketed_batches(
    windows: TrainingWindows, batch_size: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Batches of windows with similar lengths, in random order.

    Grouping similar lengths lets each batch drop the padding columns that no row uses,
    so short sequences cost short-sequence compute.
    """
    lengths = (windows.inputs > 0).sum(1)
    order = np.lexsort([rng.random(len(lengths)), lengths])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for index in rng.permutation(len(batches)):
        yield batches[index]


def trimmed_batch(
    windows: TrainingWindows, rows: np.ndarray
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Inputs, targets and gaps of ``rows`` without all-padding leading columns."""
    inputs = windows.inputs[rows]
    width = int((inputs > 0).sum(1).max())
    gaps = windows.gaps[rows, -width:] if windows.gaps is not None else None
    return (
        torch.as_tensor(inputs[:, -width:]),
        torch.as_tensor(windows.targets[rows, -width:]),
        torch.as_tensor(gaps) if gaps is not None else None,
    )


def random_batch_parts(
    windows: TrainingWindows, batch_size: int, rng: np.random.Generator
) -> Iterator[list[np.ndarray]]:
    """Uniform random batches (a fresh permutation each epoch), each as its parts.

    A random batch mixes short and long windows, so one padded pass would cost the
    longest window's width for every row. Its rows are sorted by length and cut into
    the parts that cost least (:func:`length_parts`): the parts' gradients, weighed by
    their share of the batch, add up to the whole batch's gradient.
    """
    lengths = (windows.inputs > 0).sum(1)
    order = rng.permutation(len(lengths))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        yield [rows[a:b] for a, b in length_parts(lengths[rows], PASS_POSITIONS)]


def length_parts(lengths: np.ndarray, pass_cost: int) -> list[tuple[int, int]]:
    """Cut ascending ``lengths`` into parts ``[a, b)`` of least total cost.

    A part costs its rows times its longest length (padded positions) plus ``pass_cost``
    (a pass's fixed cost, in positions). Exact, by dynamic programming over the runs of
    equal length (at most ``max_len`` of them).
    """
    values, starts = np.unique(lengths, return_index=True)
    ends = np.append(starts[1:], len(lengths))
    best, cut = [0.0], [0]  # best[j]: least cost of the first j runs; cut[j]: last part's start
    for j in range(1, len(values) + 1):
        costs = [best[i] + (ends[j - 1] - starts[i]) * values[j - 1] + pass_cost
                 for i in range(j)]  # fmt: skip
        cut.append(int(np.argmin(costs)))
        best.append(float(costs[cut[-1]]))
    parts, j = [], len(values)
    while j > 0:
        parts.append((int(starts[cut[j]]), int(ends[j - 1])))
        j = cut[j]
    return parts[::-1]


def _batch_steps(
    windows: TrainingWindows, batch_size: int, rng: np.random.Generator, batching: str
) -> Iterator[list[np.ndarray]]:
    """Every optimizer step's rows, as the parts computed one pass each."""
    if batching == "random":
        yield from random_batch_parts(windows, batch_size, rng)
    else:
        yield from ([rows] for rows in length_bucketed_batches(windows, batch_size, rng))


def train_epoch(
    model: SequenceRecommender,
    optimizer: torch.optim.Optimizer,
    windows: TrainingWindows,
    batch_size: int,
    rng: np.random.Generator,
    progress: Callable[[int], None] | None = None,
    label_smoothing: float = 0.0,
    per_window: bool = False,
    batching: str = "length",
) -> float:
    """One pass over all windows, on the model's device; returns the mean training loss."""
    model.train()
    device = model.items.weight.device
    total, batches = 0.0, 0
    for parts in _batch_steps(windows, batch_size, rng, batching):
        optimizer.zero_grad(set_to_none=True)
        # each part's mean loss weighs its share of the step's windows or positions
        sizes = [len(part) if per_window else int((windows.targets[part] > 0).sum())
                 for part in parts]  # fmt: skip
        step_size, step_loss = sum(sizes), 0.0
        for part, size in zip(parts, sizes, strict=True):
            items, targets, gaps = trimmed_batch(windows, part)
            items, targets = items.to(device), targets.to(device)
            gaps = gaps.to(device) if gaps is not None else None
            loss = next_item_loss(
                model, items, targets, gaps, label_smoothing=label_smoothing, per_window=per_window
            ) * (size / step_size)
            loss.backward()
            step_loss += float(loss.detach())
        optimizer.step()
        total += step_loss
        batches += 1
        if progress is not None:
            progress(sum(len(part) for part in parts))
    return total / max(batches, 1)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (L2 weight decay on everything) or AdamW (decoupled, on matrices only)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=config.lr, betas=(0.9, config.beta2),
            weight_decay=config.weight_decay, fused=True,
        )  # fmt: skip
    parameters = list(model.parameters())
    groups = [
        {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2), fused=True)


@dataclass
class TrainResult:
    """Best model (by validation NDCG@10), its epoch, the history and test metrics."""

    model: SequenceRecommender
    best_epoch: int
    history: list[EpochRecord]
    test: dict[str, float]
    valid: dict[str, float]


def train_centralized(
    split: LeaveOneOutSplit,
    model_config: ModelConfig,
    config: TrainConfig,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress_factory: Callable[[int, int], Callable[[int], None]] | None = None,
    model: SequenceRecommender | None = None,
    attributes: np.ndarray | None = None,
) -> TrainResult:
    """Train with early stopping on validation NDCG@10, then test the best checkpoint.

    ``attributes`` (the public item -> attribute index matrix) builds the item table of an
    ``item_embedding`` other than ``free`` (:func:`common.models.build_model`).
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if model is None:
        model = build_model(model_config, split.n_items, attributes)
    windows = WINDOWS[config.windows](
        split.train, model_config.max_len, split.times, model_config.n_gap_buckets
    )
    model.to(config.torch_device())
    optimizer = build_optimizer(model, config)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=config.lr_factor, patience=config.lr_patience, eps=0.0
        )
        if config.lr_patience
        else None
    )
    best_score, best_epoch, best_state = -1.0, 0, None
    history: list[EpochRecord] = []
    for epoch in range(1, config.epochs + 1):
        progress = progress_factory(epoch, len(windows)) if progress_factory else None
        started = time.perf_counter()
        loss = train_epoch(model, optimizer, windows, config.batch_size, rng, progress,
                           config.label_smoothing, config.loss_weighting == "window",
                           config.batching)  # fmt: skip
        lr = float(optimizer.param_groups[0]["lr"])
        record = EpochRecord(epoch, loss, time.perf_counter() - started, lr)
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            record.valid = evaluate_model(
                model, split, "valid", model_config.max_len, model_config.n_gap_buckets
            )
            if scheduler is not None:
                scheduler.step(record.valid[SELECTION_METRIC])
            if record.valid[SELECTION_METRIC] > best_score:
                best_score, best_epoch = record.valid[SELECTION_METRIC], epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if epoch - best_epoch >= config.patience * config.eval_every:
            logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    valid = evaluate_model(model, split, "valid", model_config.max_len, model_config.n_gap_buckets)
    test = evaluate_model(model, split, "test", model_config.max_len, model_config.n_gap_buckets)
    return TrainResult(model, best_epoch, history, test, valid)
