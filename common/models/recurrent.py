"""A stacked LSTM with cheap exact per-sample gradients for Opacus.

Opacus's ``DPLSTM`` runs two small linear modules per time step, and its hooks compute
and accumulate a per-sample gradient at every step. Here each layer projects all its
inputs at once, ``pre = x W_ih^T + b`` (B, T, 4h), and loops only over
``h_{t-1} W_hh^T`` and the gate math (faster for plain training too). The gradient of
the loss w.r.t. ``pre`` (``delta``) is the gradient w.r.t. every step's gate
pre-activations, so one einsum per weight gives the per-sample gradients:
``grad W_ih = sum_t delta_t x_t^T``, ``grad W_hh = sum_t delta_t h_{t-1}^T``,
``grad b = sum_t delta_t``.

Under Opacus the forward pass hooks ``pre`` to capture ``delta``; the registered grad
sampler consumes it when Opacus's full backward hook fires, which is after the gradient
w.r.t. the input, hence after every ``delta``. If the input does not require grad that
hook fires as soon as the output's gradient is known, before any ``delta`` exists; the
sampler then recomputes the deltas from the output gradient (exact, one more pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lstm_recurrence(pre: Tensor, weight_hh: Tensor) -> Tensor:
    """Hidden states (B, T, h) from gate pre-activations (B, T, 4h), zero initial state.

    Gates are ordered i, f, g, o as in ``torch.nn.LSTM``. ``unbind`` and ``chunk``, not
    indexing: their backward is one stack or cat, where each index would add a zeroed
    full-size gradient.
    """
    recurrent = weight_hh.t()
    outputs: list[Tensor] = []
    hidden: Tensor | None = None
    cell: Tensor | None = None
    for step in pre.unbind(1):
        gates = step if hidden is None else torch.addmm(step, hidden, recurrent)
        i, f, g, o = gates.chunk(4, 1)
        update = torch.sigmoid(i) * torch.tanh(g)
        cell = update if cell is None else torch.addcmul(update, torch.sigmoid(f), cell)
        hidden = torch.sigmoid(o) * torch.tanh(cell)
        outputs.append(hidden)
    return torch.stack(outputs, dim=1)


@dataclass
class _Capture:
    """One forward call's per-layer outputs, and the gradients its hooks receive."""

    hiddens: list[Tensor] = field(default_factory=list)
    deltas: dict[int, Tensor] = field(default_factory=dict)
    grad_output: Tensor | None = None

    def delta_hook(self, layer: int) -> Callable[[Tensor], None]:
        """Tensor hook storing the gradient w.r.t. ``layer``'s gate pre-activations."""

        def store(grad: Tensor) -> None:
            self.deltas[layer] = grad

        return store

    def output_hook(self, grad: Tensor) -> None:
        """Tensor hook storing the gradient w.r.t. the module's output."""
        self.grad_output = grad


class SequenceLSTM(nn.Module):
    """Batch-first stacked LSTM, (B, T, in) -> (B, T, hidden), zero initial state.

    Same gate math and initialisation as ``torch.nn.LSTM``, with one bias per layer
    (``nn.LSTM``'s ``b_ih + b_hh``). Parameters ``weight_ih_l{k}``, ``weight_hh_l{k}``,
    ``bias_l{k}``; each is held once. State dicts of Opacus's ``DPLSTM`` (older
    checkpoints) load too: its two biases are added, its aliased copies dropped.
    """

    max_batch_len: int  # set by Opacus's hooks before they call the grad sampler

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError(
                f"input_size, hidden_size and num_layers must be positive, got "
                f"{input_size}, {hidden_size}, {num_layers}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        bound = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size
            for name, shape in (
                (f"weight_ih_l{layer}", (4 * hidden_size, width)),
                (f"weight_hh_l{layer}", (4 * hidden_size, hidden_size)),
                (f"bias_l{layer}", (4 * hidden_size,)),
            ):
                self.register_parameter(name, nn.Parameter(torch.empty(shape)))
                nn.init.uniform_(getattr(self, name), -bound, bound)
        self._captures: list[_Capture] = []  # one per forward call awaiting the sampler

    def layer_weights(self, layer: int) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
        """``(weight_ih, weight_hh, bias)`` of one layer."""
        return (
            getattr(self, f"weight_ih_l{layer}"),
            getattr(self, f"weight_hh_l{layer}"),
            getattr(self, f"bias_l{layer}"),
        )

    def forward(self, x: Tensor) -> Tensor:
        capture = self._start_capture()
        # tensor hooks only where Opacus's hook comes after them (module docstring)
        hooked = capture if capture is not None and x.requires_grad else None
        for layer in range(self.num_layers):
            weight_ih, weight_hh, bias = self.layer_weights(layer)
            pre = F.linear(x, weight_ih, bias)
            if hooked is not None and pre.requires_grad:
                pre.register_hook(hooked.delta_hook(layer))
            x = lstm_recurrence(pre, weight_hh)
            if capture is not None:
                capture.hiddens.append(x.detach())
        if hooked is not None and x.requires_grad:
            x.register_hook(hooked.output_hook)
        return x

    def _start_capture(self) -> _Capture | None:
        """A record for Opacus's grad sampler, or None when Opacus will not ask for one.

        Opacus stacks the input of every call it hooks (``activations``) and pops it in
        the backward pass; our records are stacked alongside and popped with it.
        Records of calls Opacus skipped (its hooks disabled) are dropped here.
        """
        del self._captures[len(getattr(self, "activations", ())) :]
        recorded = self.training and torch.is_grad_enabled()
        if not (
            recorded and self._backward_hooks and any(p.requires_grad for p in self.parameters())
        ):
            return None
        capture = _Capture()
        self._captures.append(capture)
        return capture

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        for layer in range(self.num_layers):
            old_ih, old_hh = f"{prefix}bias_ih_l{layer}", f"{prefix}bias_hh_l{layer}"
            if old_ih in state_dict and old_hh in state_dict:
                state_dict[f"{prefix}bias_l{layer}"] = state_dict.pop(old_ih) + state_dict.pop(
                    old_hh
                )
            for alias in ("ih.weight", "ih.bias", "hh.weight", "hh.bias"):
                state_dict.pop(f"{prefix}l{layer}.{alias}", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def sequence_lstm_grad_sample(
    module: SequenceLSTM, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Per-sample gradients of every layer from its ``delta`` (module docstring).

    ``backprops`` is the output gradient times the batch size when Opacus's loss
    reduction is "mean"; the captured deltas get the same factor.
    """
    inputs = activations[0]
    capture = module._captures.pop()
    if len(capture.deltas) == module.num_layers and capture.grad_output is not None:
        scale = _reduction_scale(backprops, capture.grad_output, module.max_batch_len)
        deltas = [capture.deltas[layer] for layer in range(module.num_layers)]
        if scale != 1.0:
            deltas = [delta * scale for delta in deltas]
        hiddens = capture.hiddens
    else:  # the input did not require grad: Opacus's hook came before the deltas
        deltas, hiddens = _recomputed_deltas(module, inputs, backprops)
    grads: dict[nn.Parameter, Tensor] = {}
    for layer, (delta, hidden) in enumerate(zip(deltas, hiddens, strict=True)):
        weight_ih, weight_hh, bias = module.layer_weights(layer)
        if weight_ih.requires_grad:
            grads[weight_ih] = torch.einsum("btg,bti->bgi", delta, inputs)
        if weight_hh.requires_grad:  # h_{t-1} is zero at t = 0
            grads[weight_hh] = torch.einsum("btg,bth->bgh", delta[:, 1:], hidden[:, :-1])
        if bias.requires_grad:
            grads[bias] = delta.sum(1)
        inputs = hidden
    return grads


def _reduction_scale(backprops: Tensor, grad_output: Tensor, batch_size: int) -> float:
    """The factor Opacus applied to the output gradient: 1 ("sum") or the batch size."""
    if torch.equal(backprops, grad_output):
        return 1.0
    if torch.equal(backprops, grad_output * batch_size):
        return float(batch_size)
    raise RuntimeError(
        "SequenceLSTM: Opacus's output gradient is neither the captured one nor it times "
        "the batch size (SequenceLSTM needs batch_first=True and loss_reduction sum or mean)"
    )


def _recomputed_deltas(
    module: SequenceLSTM, x: Tensor, backprops: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """Every layer's delta and output, by a forward and backward pass of our own."""
    with torch.enable_grad():
        pres, hiddens = [], []
        inputs = x.detach()
        for layer in range(module.num_layers):
            weight_ih, weight_hh, bias = (w.detach() for w in module.layer_weights(layer))
            pre = F.linear(inputs, weight_ih, bias)
            if not pre.requires_grad:
                pre.requires_grad_(True)
            inputs = lstm_recurrence(pre, weight_hh)
            pres.append(pre)
            hiddens.append(inputs)
        deltas = torch.autograd.grad(inputs, pres, backprops)
    return list(deltas), [hidden.detach() for hidden in hiddens]
