"""SequenceLSTM: torch.nn.LSTM's math, exact per-sample gradients, one copy of each weight."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.layers import DPLSTM
from opacus.utils.per_sample_gradients_utils import check_per_sample_gradients_are_correct
from torch import Tensor, nn

import common.models.grad_samplers  # noqa: F401  (our layers' samplers, for Opacus)
from common.models import ModelConfig, build_model, recurrent
from common.models.recurrent import SequenceLSTM

IN, HIDDEN, BATCH, STEPS = 3, 4, 5, 6


def copied_from(reference: nn.LSTM) -> SequenceLSTM:
    """A SequenceLSTM with nn.LSTM's weights (its two biases added)."""
    lstm = SequenceLSTM(reference.input_size, reference.hidden_size, reference.num_layers)
    with torch.no_grad():
        for layer in range(reference.num_layers):
            weight_ih, weight_hh, bias = lstm.layer_weights(layer)
            weight_ih.copy_(getattr(reference, f"weight_ih_l{layer}"))
            weight_hh.copy_(getattr(reference, f"weight_hh_l{layer}"))
            bias.copy_(
                getattr(reference, f"bias_ih_l{layer}") + getattr(reference, f"bias_hh_l{layer}")
            )
    return lstm


class Projected(nn.Module):
    """A linear layer before the LSTM, so the LSTM's input requires grad."""

    def __init__(self, layers: int, calls: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(IN, HIDDEN)
        self.lstm = SequenceLSTM(HIDDEN, HIDDEN, layers)
        self.calls = calls

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.linear(x)
        for _ in range(self.calls):
            hidden = self.lstm(hidden)
        return hidden


def padded_batch() -> Tensor:
    torch.manual_seed(0)
    x = torch.randn(BATCH, STEPS, IN)
    x[0, :4] = 0.0  # left padding, as the recommenders feed it
    x[1, :5] = 0.0
    return x


@pytest.mark.parametrize("layers", [1, 2])
def test_outputs_and_gradients_match_torch_lstm(layers: int) -> None:
    torch.manual_seed(0)
    reference = nn.LSTM(IN, HIDDEN, num_layers=layers, batch_first=True)
    lstm = copied_from(reference)
    x = padded_batch()
    x_ours, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    weights = torch.randn(BATCH, STEPS, HIDDEN)

    ours, (theirs, _) = lstm(x_ours), reference(x_ref)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()

    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=0, atol=1e-6)
    for layer in range(layers):
        weight_ih, weight_hh, bias = lstm.layer_weights(layer)
        for mine, name in ((weight_ih, "weight_ih"), (weight_hh, "weight_hh"), (bias, "bias_ih")):
            torch.testing.assert_close(
                mine.grad, getattr(reference, f"{name}_l{layer}").grad, rtol=0, atol=1e-6
            )


def test_initialisation_is_torch_lstms_uniform_range() -> None:
    torch.manual_seed(0)
    lstm = SequenceLSTM(IN, 16, num_layers=2)
    values = torch.cat([p.flatten() for p in lstm.parameters()])
    assert float(values.abs().max()) <= 0.25  # 1 / sqrt(16)
    assert float(values.abs().max()) > 0.24
    assert [n for n, _ in lstm.named_parameters()] == [
        "weight_ih_l0", "weight_hh_l0", "bias_l0", "weight_ih_l1", "weight_hh_l1", "bias_l1",
    ]  # fmt: skip


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("calls", [1, 2])
def test_per_sample_gradients_from_captured_deltas(
    layers: int, calls: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_recompute(*_args: object) -> None:
        raise AssertionError("the input requires grad: the captured deltas must be used")

    monkeypatch.setattr(recurrent, "_recomputed_deltas", no_recompute)
    torch.manual_seed(0)
    model = Projected(layers, calls)
    # both loss reductions ("sum" and "mean") against one backward pass per sample
    assert check_per_sample_gradients_are_correct(padded_batch(), model, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_per_sample_gradients_when_the_input_needs_no_grad(layers: int) -> None:
    torch.manual_seed(0)
    lstm = SequenceLSTM(IN, HIDDEN, layers)
    with pytest.warns(UserWarning, match="no inputs require gradients"):
        assert check_per_sample_gradients_are_correct(padded_batch(), lstm, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "multiscale"])
def test_models_hold_one_copy_of_every_weight(name: str) -> None:
    model = build_model(ModelConfig(name=name, dim=8, layers=2), n_items=20)
    state = model.state_dict()
    assert list(state) == [n for n, _ in model.named_parameters()]
    assert len({t.data_ptr() for t in state.values()}) == len(state)


def test_plain_training_captures_nothing() -> None:
    lstm = SequenceLSTM(IN, HIDDEN, 2)
    x = padded_batch().requires_grad_(True)
    lstm(x).sum().backward()
    assert lstm._captures == []


def grad_samples(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Per-sample gradients of ``sum(model(x))`` from Opacus's hooks."""
    sampler = GradSampleModule(model, loss_reduction="sum")
    sampler(x).sum().backward()
    samples = {n: p.grad_sample.clone() for n, p in model.named_parameters()}  # type: ignore[attr-defined]
    sampler._close()
    model.zero_grad(set_to_none=True)
    return samples


@pytest.mark.parametrize("skipped", ["no backward pass", "hooks disabled"])
def test_calls_without_per_sample_gradients_do_not_disturb_later_ones(skipped: str) -> None:
    torch.manual_seed(0)
    model = Projected(layers=2)
    x = padded_batch()
    reference = grad_samples(model, x)
    sampler = GradSampleModule(model, loss_reduction="sum")
    if skipped == "hooks disabled":
        sampler.disable_hooks()
        sampler(x).sum().backward()
        sampler.enable_hooks()
    else:
        sampler(x)  # e.g. a step that failed before its backward pass
    sampler._close()
    model.zero_grad(set_to_none=True)

    grads = grad_samples(model, x)

    # our records stay aligned with Opacus's stacked inputs (a stale one: Opacus's too)
    assert len(model.lstm._captures) == len(getattr(model.lstm, "activations", ()))
    for name, value in grads.items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0)


@pytest.mark.parametrize("layers", [1, 2])
def test_dplstm_state_dicts_load_with_the_same_outputs(layers: int) -> None:
    torch.manual_seed(0)
    old = nn.Sequential(DPLSTM(IN, HIDDEN, num_layers=layers, batch_first=True))
    new = nn.Sequential(SequenceLSTM(IN, HIDDEN, layers))
    assert any(key.startswith("0.l0.ih.") for key in old.state_dict())  # DPLSTM's aliases

    new.load_state_dict(old.state_dict())

    x = padded_batch()
    torch.testing.assert_close(new(x), old(x)[0], rtol=0, atol=1e-6)
