"""Item vectors from public attributes: composition, tying, per-sample gradients, exact
clipping, checkpoints and the errors for a missing attribute file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.utils.per_sample_gradients_utils import check_per_sample_gradients_are_correct
from torch import Tensor, nn

import common.models.grad_samplers  # noqa: F401  (our layers' samplers, for Opacus)
from client.recommend import recommend
from common.data.attributes import load_item_attributes
from common.data.features import TrainingWindows, training_windows
from common.data.partitioning import load_split
from common.federation.checkpoints import (
    Checkpoint,
    dataset_item_ids,
    load_checkpoint,
    save_checkpoint,
)
from common.federation.config import FederatedConfig
from common.federation.preflight import check_simulation_inputs
from common.federation.run_model import run_model
from common.models import MODEL_NAMES, ModelConfig, SequenceRecommender, build_model
from common.models.base import next_item_loss
from common.privacy.randomness import PrivacyRandomness
from common.training.cli import configs_from
from common.training.cli import run as train_run
from common.training.clipping import CLIP_MARGIN, clipped_gradient_sum
from common.training.cohort import clipped_sgd_update, looped_update
from common.training.dp_sgd import train_local_dp
from common.training.local import train_local
from tests.helpers import ItemLogits, per_unit_gradients, write_cycle_attributes

N_ITEMS = 11
# item -> attributes (1..5); items 2, 3, 4, 9, 10 have none
PADDED = np.array(
    [[0, 0, 0], [3, 5, 2], [0, 0, 0], [0, 0, 0], [0, 0, 0], [2, 3, 4], [3, 5, 0], [4, 5, 1],
     [2, 1, 4], [0, 0, 0], [0, 0, 0], [3, 5, 1]]
)  # fmt: skip
MODES = ("attributes", "attributes+residual")


def attribute_model(
    mode: str, name: str = "attention", padded: np.ndarray = PADDED, residual_init: bool = True
) -> SequenceRecommender:
    """A tiny model; with ``residual_init`` the residual is randomised (it starts at zero)."""
    torch.manual_seed(0)
    config = ModelConfig(name=name, dim=8, layers=1, heads=2, dropout=0.0, max_len=6,
                         item_embedding=mode)  # fmt: skip
    model = build_model(config, len(padded) - 1, padded)
    if residual_init and model.items.residual is not None:  # type: ignore[union-attr]
        nn.init.normal_(model.items.residual, std=0.3)  # type: ignore[union-attr]
    return model


def test_item_vectors_are_mean_attribute_vectors_and_bare_items_share_one() -> None:
    model = attribute_model("attributes")
    table, attributes = model.items.weight.detach(), model.items.attributes.detach()  # type: ignore[union-attr]

    assert tuple(attributes.shape) == (7, 8)  # padding, 5 attributes, "no attributes"
    torch.testing.assert_close(table[1], attributes[[3, 5, 2]].mean(0))
    torch.testing.assert_close(table[6], attributes[[3, 5]].mean(0))
    for bare in (2, 3, 4, 9, 10):
        torch.testing.assert_close(table[bare], attributes[6])
    assert torch.count_nonzero(table[0]) == 0
    looked_up = model.items(torch.tensor([[0, 1, 6]]))
    torch.testing.assert_close(looked_up[0], torch.stack([table[0] * 0, table[1], table[6]]))


def test_the_residual_starts_at_zero_and_adds_per_item() -> None:
    plain = attribute_model("attributes")
    with_residual = attribute_model("attributes+residual", residual_init=False)
    residual = with_residual.items.residual  # type: ignore[union-attr]
    assert residual is not None and tuple(residual.shape) == (N_ITEMS + 1, 8)
    assert torch.count_nonzero(residual) == 0
    nn.init.normal_(residual)
    expected = with_residual.items.attributes[[3, 5]].mean(0) + residual[6]  # type: ignore[union-attr]
    torch.testing.assert_close(with_residual.items.weight[6], expected)
    assert "items.residual" not in dict(plain.named_parameters())


@pytest.mark.parametrize("mode", MODES)
def test_the_composed_table_scores_the_outputs_and_padding_is_never_scored(mode: str) -> None:
    model = attribute_model(mode).eval()
    items = torch.tensor([[0, 0, 1, 5, 6, 7], [2, 3, 4, 9, 10, 11]])

    scores = model.scores(items)

    hidden = model(items)[:, -1]
    torch.testing.assert_close(scores[:, 1:], hidden @ model.items.weight[1:].T)
    assert scores.shape == (2, N_ITEMS + 1) and bool(torch.isinf(scores[:, 0]).all())
    # tied: the scores' gradient reaches the attribute table
    scores[:, 1:].sum().backward()
    assert model.items.attributes.grad is not None  # type: ignore[union-attr]
    assert torch.count_nonzero(model.items.attributes.grad[1:6]) > 0  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_per_sample_gradients_match_micro_batches(mode: str, name: str) -> None:
    model = attribute_model(mode, name)
    torch.manual_seed(1)
    items = torch.randint(1, N_ITEMS + 1, (4, 6))
    items[0, :3] = 0
    items[1, :5] = 0
    assert check_per_sample_gradients_are_correct(
        items, ItemLogits(model), batch_first=True, atol=1e-5, rtol=1e-4
    )


def user_batch() -> tuple[Tensor, Tensor, Tensor]:
    """Windows of 10 users over the 11 items, several rows for the longer users."""
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(1, N_ITEMS + 1, size=rng.integers(2, 20))) for _ in range(10)]
    windows = training_windows(sequences, 6, None, 0)
    return (torch.as_tensor(windows.inputs), torch.as_tensor(windows.targets),
            torch.as_tensor(windows.owners))  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("dense_fraction", [0.0, 2.0])
def test_clipping_is_exact_against_per_user_backward(
    mode: str, name: str, dense_fraction: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("common.training.clipping.DENSE_FRACTION", dense_fraction)
    items, targets, owners = user_batch()
    per_row = dense_fraction == 0.0  # one unit per row: the (row, position) grid path
    units = torch.arange(len(items)) if per_row else owners
    weights = torch.full((len(items),), 0.2)
    model = attribute_model(mode, name)
    norms, per_unit = per_unit_gradients(model, items, targets, None, units, weights, 0.5)
    clip = float(norms.median())
    expected = {
        key: sum(min(1.0, clip * (1 - CLIP_MARGIN) / float(norm)) * grads[key]
                 for norm, grads in zip(norms, per_unit, strict=True))
        for key in per_unit[0]
    }  # fmt: skip

    result = clipped_gradient_sum(model, items, targets, None, units, weights, clip, scale=0.5,
                                  product_dtype=torch.float32)  # fmt: skip

    torch.testing.assert_close(result.norms, norms, rtol=1e-4, atol=1e-6)
    for key, value in expected.items():
        torch.testing.assert_close(result.grads[key], value, rtol=1e-4, atol=1e-6)
    assert all(p.requires_grad for p in model.items.parameters())
    assert not model.items._forward_hooks


@pytest.mark.parametrize("mode", MODES)
def test_cohort_clipped_updates_equal_users_trained_one_by_one(
    cycle_log: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("common.models.chunked_loss.fast_bfloat16_available", lambda: False)
    monkeypatch.setattr("common.training.clipping.PRODUCT_DTYPE", torch.float32)
    split = load_split(str(cycle_log))
    windows: TrainingWindows = training_windows(split.train, max_len=6, n_gap_buckets=0)
    config = FederatedConfig(dataset=str(cycle_log), dim=8, max_len=6, dropout=0.0,
                             optimizer="sgd", lr=0.5, batch_size=64)  # fmt: skip
    model = attribute_model(mode, padded=cycle_attributes(cycle_log, tmp=None))

    vectorized = clipped_sgd_update(model, windows, config.lr, clip_norm=0.05)
    looped = looped_update(
        model, windows, lambda m, w, owner: train_local(m, w, config, seed=owner), clip_norm=0.05
    )

    assert vectorized.clipped == looped.clipped == vectorized.users
    for key, value in looped.delta_sum.items():
        np.testing.assert_allclose(vectorized.delta_sum[key], value, rtol=2e-3, atol=2e-5)


def cycle_attributes(cycle_log: Path, tmp: Path | None) -> np.ndarray:
    """The cyclic log's attribute matrix (:func:`write_cycle_attributes`, in ``tmp``)."""
    path = write_cycle_attributes(cycle_log, (tmp or cycle_log.parent) / "attributes.csv")
    attributes = load_item_attributes(path, dataset_item_ids(str(cycle_log)), str(cycle_log))
    assert attributes is not None
    return attributes.padded()


@pytest.mark.parametrize("mode", MODES)
def test_a_checkpoint_rebuilds_the_model_on_a_device(
    cycle_log: Path, tmp_path: Path, mode: str
) -> None:
    config = FederatedConfig(dataset=str(cycle_log), model="lstm", dim=8, max_len=6,
                             item_embedding=mode,
                             item_attributes=str(tmp_path / "attributes.csv"))  # fmt: skip
    cycle_attributes(cycle_log, tmp_path)
    model = run_model(config, 30)
    item_ids = dataset_item_ids(str(cycle_log))
    save_checkpoint(tmp_path / "c.pt", Checkpoint(3, model.state_dict(), config.model_config(),
                                                  item_ids, str(cycle_log)))  # fmt: skip
    (tmp_path / "attributes.csv").unlink()  # the device needs only the checkpoint

    loaded = load_checkpoint(tmp_path / "c.pt")
    rebuilt = loaded.build_model().eval()

    history = torch.tensor([[0, 0, 3, 4, 5, 6]])
    torch.testing.assert_close(rebuilt.scores(history), model.eval().scores(history))
    ranked, _ = recommend(loaded, ["i3", "i4"], 3, {})
    assert len(ranked) == 3 and not {"i3", "i4"} & {r.item for r in ranked}


def test_weights_of_other_attributes_are_refused() -> None:
    model = attribute_model("attributes")
    other = PADDED.copy()
    other[2, 0] = 1  # same shape, another map
    with pytest.raises(ValueError, match="trained on other item attributes"):
        attribute_model("attributes", padded=other).load_state_dict(model.state_dict())


def test_missing_attributes_are_one_clear_error(cycle_log: Path) -> None:
    with pytest.raises(ValueError, match="item-embedding 'attributes' needs item attributes"):
        build_model(ModelConfig(item_embedding="attributes"), N_ITEMS)
    with pytest.raises(ValueError, match="needs item-attributes"):
        FederatedConfig(dataset=str(cycle_log), item_embedding="attributes+residual")
    with pytest.raises(ValueError, match="needs --item-attributes"):
        configs_from({"model": "lstm", "item_embedding": "attributes", "dataset": "beauty"})
    with pytest.raises(ValueError, match="item-embedding must be one of"):
        ModelConfig(item_embedding="brand")
    with pytest.raises(ValueError, match="describe 11 items, the model has 12"):
        build_model(ModelConfig(item_embedding="attributes"), N_ITEMS + 1, PADDED)


def test_training_moves_attribute_vectors_only_through_items_that_have_them() -> None:
    model = attribute_model("attributes", "lstm")
    before = model.items.attributes.detach().clone()  # type: ignore[union-attr]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    items = torch.tensor([[0, 0, 0, 2, 3, 4]])  # bare items only
    next_item_loss(model, items, torch.tensor([[0, 0, 0, 3, 4, 9]])).backward()
    optimizer.step()
    after = model.items.attributes.detach()  # type: ignore[union-attr]
    assert torch.equal(after[0], before[0])  # padding row: never trained
    assert not torch.equal(after[6], before[6])  # the "no attributes" vector learnt
    assert not torch.equal(after[1:6], before[1:6])  # scored against every item


@pytest.mark.parametrize("mode", MODES)
def test_dp_sgd_trains_the_attribute_table(cycle_log: Path, mode: str) -> None:
    split = load_split(str(cycle_log))
    windows = training_windows(split.train, max_len=6, n_gap_buckets=0)
    model = attribute_model(mode, "lstm", padded=cycle_attributes(cycle_log, tmp=None))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    loss, release = train_local_dp(model, windows, epochs=1, batch_size=8, lr=0.05,
                                   optimizer_name="sgd", noise_multiplier=1.1, clip_norm=1.0,
                                   seed=3, randomness=PrivacyRandomness())  # fmt: skip

    assert np.isfinite(loss) and release.steps > 0
    for name, param in model.items.named_parameters():
        assert not torch.equal(param, before[f"items.{name}"]), name
        assert not hasattr(param, "grad_sample")


def test_fedseqrec_train_with_attributes_writes_a_rebuildable_checkpoint(
    cycle_log: Path, tmp_path: Path
) -> None:
    cycle_attributes(cycle_log, tmp_path)
    settings = {"dataset": str(cycle_log), "model": "lstm", "out": str(tmp_path / "runs"),
                "item_attributes": str(tmp_path / "attributes.csv"), "dim": 8, "max_len": 6,
                "item_embedding": "attributes+residual", "epochs": 2, "dropout": 0.0}  # fmt: skip

    run_dir, result = train_run(settings)

    assert 0.0 <= result.test["ndcg@10"] <= 1.0
    assert "items.attributes" in dict(result.model.named_parameters())
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")  # rebuilt from config.json
    assert checkpoint.model_config.item_embedding == "attributes+residual"
    history = torch.tensor([[0, 0, 3, 4, 5, 6]])
    torch.testing.assert_close(
        checkpoint.build_model().eval().scores(history), result.model.eval().scores(history)
    )


def test_a_run_refuses_an_initial_checkpoint_of_other_attributes(
    cycle_log: Path, tmp_path: Path
) -> None:
    ours = write_cycle_attributes(cycle_log, tmp_path / "ours.csv")
    theirs = tmp_path / "theirs.csv"  # the same attributes, "even" on i1 instead of i0
    theirs.write_text(ours.read_text().replace("i0,even", "i1,even"))
    base = {"dataset": str(cycle_log), "model": "lstm", "dim": 8, "max_len": 6,
            "item_embedding": "attributes", "users_per_client": 10}  # fmt: skip
    trained = FederatedConfig(**base, item_attributes=str(ours))  # type: ignore[arg-type]
    item_ids = dataset_item_ids(str(cycle_log))
    save_checkpoint(tmp_path / "c.pt", Checkpoint(1, run_model(trained, 30).state_dict(),
                                                  trained.model_config(), item_ids,
                                                  str(cycle_log)))  # fmt: skip
    same = FederatedConfig(**base, item_attributes=str(ours),  # type: ignore[arg-type]
                           initial_checkpoint=str(tmp_path / "c.pt"))  # fmt: skip
    other = FederatedConfig(**base, item_attributes=str(theirs),  # type: ignore[arg-type]
                            initial_checkpoint=str(tmp_path / "c.pt"))  # fmt: skip

    assert check_simulation_inputs(same) == 20
    with pytest.raises(ValueError, match=r"initial-checkpoint .*c\.pt: the weights were trained "
                                         "on other item attributes"):  # fmt: skip
        check_simulation_inputs(other)
