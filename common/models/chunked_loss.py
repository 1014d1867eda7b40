"""Cross-entropy over all items without materialising the full (positions x items) logits.

Scoring every position against every item is the dominant cost of training. Done in
one piece, the logits matrix (e.g. 1,500 x 12,101 floats per batch) is written and
re-read several times from main memory. Here the loss and its gradients are computed
chunk by chunk in the forward pass, so each chunk of logits stays in cache; backward
only scales the stored gradients. Used for plain (non-private) training; Opacus needs
per-sample gradients and takes the dense path.

Where the CPU has native bfloat16 matrix units (AVX512-BF16, AMX), the three matrix
products run in bfloat16 with float32 softmax and float32 gradient accumulation, as
mixed-precision training does on GPUs; elsewhere everything stays float32. On a CUDA
device the products run in bfloat16 where the GPU supports it, like the CPU path.

Optional label smoothing (training only) mixes the one-hot target with the uniform
distribution over all items: loss = (1 - e) * CE + e * mean over items of -log p.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

DEFAULT_CHUNK = 128


def fast_bfloat16_available() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (not emulated)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def exp_scores(
    low_hidden: Tensor, low_weight: Tensor, targets: Tensor, with_mean: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """One chunk's scores ``low_hidden @ low_weight.T`` (float32), shifted by each row's
    maximum and exponentiated in place (one exp per score).

    Returns the exponentiated scores, their row sums, each row's log normaliser, the
    target's score and (``with_mean``) each row's mean score; callers normalise the
    exponentials with whatever scale they need in one pass.
    """
    logits = (low_hidden @ low_weight.T).float()
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    mean = logits.mean(dim=1) if with_mean else None
    maxima = logits.amax(dim=1, keepdim=True)
    exponentials = logits.sub_(maxima).exp_()
    sums = exponentials.sum(dim=1, keepdim=True)
    return exponentials, sums, (maxima + sums.log()).squeeze(1), picked, mean


class ChunkedLinearCrossEntropy(Function):
    """Mean (or row-weighted) cross-entropy of ``hidden @ weight.T`` against ``targets``
    (column indices)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        chunk_size: int,
        dtype: torch.dtype,
        smoothing: float,
        row_weights: Tensor | None,
    ) -> Tensor:
        count, n_classes = hidden.shape[0], weight.shape[0]
        shares = (  # each row's share of the loss: 1 / count, or the caller's weights
            hidden.new_full((count,), 1.0 / count, dtype=torch.float32)
            if row_weights is None
            else row_weights.float()
        )
        low_hidden, low_weight = hidden.to(dtype), weight.to(dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        total = hidden.new_zeros((), dtype=torch.float64)
        for start in range(0, count, chunk_size):
            rows = slice(start, start + chunk_size)
            chunk, target = low_hidden[rows], targets[rows]
            probabilities, sums, log_normaliser, picked, mean = exp_scores(
                chunk, low_weight, target, with_mean=bool(smoothing)
            )
            # Smoothed target: (1 - e) on the true item + e / n_classes on every item.
            expected = (1.0 - smoothing) * picked
            if mean is not None:
                expected = expected + smoothing * mean
            share = shares[rows]
            total += (log_normaliser.sub(expected) * share).sum().double()
            probabilities *= share.unsqueeze(1) / sums
            if smoothing:
                probabilities -= (smoothing / n_classes) * share.unsqueeze(1)
            rows_here = torch.arange(len(target), device=target.device)
            probabilities[rows_here, target] -= (1.0 - smoothing) * share
            low_probabilities = probabilities.to(dtype)
            grad_hidden[rows] = low_probabilities @ low_weight
            grad_weight += low_probabilities.T @ chunk
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total.to(hidden.dtype)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_output: Tensor
    ) -> tuple[Tensor, Tensor, None, None, None, None, None]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None, None, None


def chunked_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    low_precision: bool | None = None,
    label_smoothing: float = 0.0,
    row_weights: Tensor | None = None,
) -> Tensor:
    """Mean over rows of CE(hidden @ weight.T, targets), computed chunk by chunk.

    ``low_precision=None`` picks bfloat16 products where the device has them natively.
    ``label_smoothing`` in [0, 1) matches ``F.cross_entropy(..., label_smoothing=...)``.
    ``row_weights`` (summing to 1) replace the mean by that weighted sum of row losses.
    """
    if hidden.shape[0] == 0:
        raise ValueError("no positions to score")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if low_precision is None:
        low_precision = (
            torch.cuda.is_bf16_supported() if hidden.is_cuda else fast_bfloat16_available()
        )
    dtype = torch.bfloat16 if low_precision else hidden.dtype
    return ChunkedLinearCrossEntropy.apply(  # type: ignore[no-any-return]
        hidden, weight, targets, chunk_size, dtype, label_smoothing, row_weights
    )
