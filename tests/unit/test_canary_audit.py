"""The empirical privacy audit: canary users, membership statistics, the command end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.loaders import load_dataset
from common.data.sequences import build_sequences
from common.federation.checkpoints import Checkpoint
from common.federation.config import FederatedConfig
from common.models import ModelConfig, build_model, next_item_loss
from common.privacy.canaries import CanarySet, canary_losses, make_canaries, write_planted_log
from common.privacy.membership_inference import (
    audit_membership,
    clopper_pearson_lower,
    clopper_pearson_upper,
    selection_mask,
)
from simulations import canary_audit
from simulations.canary_audit import CanaryAudit, Guarantee, main, render, same_cohort_count
from tests.helpers import write_cycle_log


def members_first(n: int) -> np.ndarray:
    """``n`` canaries, the first half planted."""
    return np.arange(n) < n // 2


# --- statistics -------------------------------------------------------------------------


def test_clopper_pearson_bounds_match_hand_computed_values() -> None:
    # all 10 successes: the lower bound solves p^10 = alpha; none: 1 - (1 - p)^10 = alpha
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.05**0.1)
    assert clopper_pearson_upper(0, 10, 0.05) == pytest.approx(1 - 0.05**0.1)
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    assert clopper_pearson_upper(10, 10, 0.05) == 1.0
    # 5 of 10: the textbook exact 90% two-sided interval (0.2224, 0.7776)
    assert clopper_pearson_lower(5, 10, 0.05) == pytest.approx(0.22244, abs=1e-5)
    assert clopper_pearson_upper(5, 10, 0.05) == pytest.approx(0.77756, abs=1e-5)
    with pytest.raises(ValueError, match="need 0 <= successes <= trials"):
        clopper_pearson_lower(11, 10, 0.05)


def test_bound_is_zero_when_members_and_nonmembers_share_a_distribution() -> None:
    is_member = members_first(200)
    positive = 0
    for seed in range(100):
        losses = np.random.default_rng(seed).normal(size=200)
        audit = audit_membership(losses, is_member, delta=1e-3, seed=seed)
        positive += audit.epsilon_lower_bound > 0

    assert positive <= 5  # a 95% lower bound may be wrong at most 5% of the time
    first = audit_membership(np.random.default_rng(0).normal(size=200), is_member, 1e-3, seed=0)
    assert first.epsilon_lower_bound == 0.0
    assert 0.4 < first.auc < 0.6


def test_perfect_separation_gives_the_closed_form_bound() -> None:
    is_member = members_first(200)
    losses = np.where(is_member, 1.0, 5.0) + np.linspace(0, 0.5, 200)
    delta = 1e-4

    audit = audit_membership(losses, is_member, delta, confidence=0.95, seed=3)

    # 50 members and 50 non-members are tested, each rate bounded at alpha = 0.025:
    # TPR >= 0.025^(1/50), FPR <= 1 - 0.025^(1/50)
    tpr_low = 0.025 ** (1 / 50)
    assert audit.evaluation.true_positives == 50 and audit.evaluation.false_positives == 0
    assert audit.epsilon_lower_bound == pytest.approx(math.log((tpr_low - delta) / (1 - tpr_low)))
    assert audit.epsilon_lower_bound > 2.5
    assert audit.ceiling == audit.epsilon_lower_bound  # nothing could do better
    assert audit.auc == 1.0


@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_bound_stays_below_the_epsilon_of_randomized_response(epsilon: float) -> None:
    # each canary's score is one randomized-response bit about its membership: exactly
    # epsilon-DP, and the best threshold test reaches TPR / FPR = exp(epsilon)
    keep = math.exp(epsilon) / (1 + math.exp(epsilon))
    is_member = members_first(2000)
    bounds = []
    for seed in range(100):
        told = np.random.default_rng(seed).random(2000) < keep
        losses = np.where(is_member == told, 0.0, 1.0)
        bounds.append(audit_membership(losses, is_member, 0.0, seed=seed).epsilon_lower_bound)

    assert np.mean(np.asarray(bounds) > epsilon) <= 0.05  # sound at 95% confidence
    assert np.mean(bounds) > 0.6 * epsilon  # and not vacuous


def test_threshold_is_chosen_on_a_stratified_half_and_tested_on_the_other() -> None:
    is_member = members_first(10)
    chosen = selection_mask(is_member, seed=1)
    assert chosen[is_member].sum() == 2 and chosen[~is_member].sum() == 2
    assert np.array_equal(chosen, selection_mask(is_member, seed=1))

    audit = audit_membership(np.arange(10.0), is_member, delta=0.0, seed=1)

    assert audit.selection.members + audit.selection.nonmembers == 4
    assert audit.evaluation.members + audit.evaluation.nonmembers == 6
    with pytest.raises(ValueError, match="at least 2 members and 2 non-members"):
        audit_membership(np.arange(5.0), np.array([True, False, False, False, False]), 0.0)


# --- canaries ---------------------------------------------------------------------------


def test_canaries_are_seeded_users_of_distinct_catalogue_items_half_planted() -> None:
    users, items = np.arange(1, 944), np.arange(1, 1683)

    canaries = make_canaries(users, items, count=10, length=20, seed=7)

    assert canaries.user_ids == list(range(944, 954))  # after every real user id
    assert int(canaries.planted.sum()) == 5
    assert all(len(set(s)) == 20 and set(s) <= set(items.tolist()) for s in canaries.sequences)
    again = make_canaries(users, items, count=10, length=20, seed=7)
    assert again.sequences == canaries.sequences
    assert np.array_equal(again.planted, canaries.planted)
    with pytest.raises(ValueError, match="must be even and at least 4"):
        make_canaries(users, items, count=7, length=20, seed=7)
    with pytest.raises(ValueError, match="canary length must be in 4..1682"):
        make_canaries(users, items, count=8, length=3, seed=7)


def test_planted_u_data_keeps_every_real_user_and_adds_only_the_planted(tmp_path: Path) -> None:
    source = tmp_path / "source" / "u.data"
    source.parent.mkdir()
    rows = [(u, i, 3, 100 + t) for u in (1, 2, 3) for t, i in enumerate((5, 6, 7, 8, 9))]
    source.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    log = load_dataset(str(source))
    real = build_sequences(log)
    canaries = make_canaries(real.user_ids, real.item_ids, count=4, length=4, seed=0)

    path = write_planted_log(source, log, canaries, tmp_path / "planted")

    planted = build_sequences(load_dataset(str(path)))
    assert path.name == "u.data" and planted.n_users == 3 + 2
    assert planted.n_items == real.n_items
    for ours, theirs in zip(real.sequences, planted.sequences[:3], strict=True):
        assert np.array_equal(ours, theirs)
    in_log = {
        int(user): [int(planted.item_ids[i - 1]) for i in sequence]
        for user, sequence in zip(planted.user_ids[3:], planted.sequences[3:], strict=True)
    }
    assert in_log == dict(canaries.planted_users())


def test_planted_csv_names_canaries_apart_from_real_users(tmp_path: Path) -> None:
    source = write_cycle_log(tmp_path / "cycle.csv", n_users=3, n_items=12, length=6)
    log = load_dataset(str(source))
    real = build_sequences(log)
    canaries = make_canaries(real.user_ids, real.item_ids, count=4, length=5, seed=0)

    path = write_planted_log(source, log, canaries, tmp_path / "planted")

    planted = build_sequences(load_dataset(str(path)))
    assert path.name == "clicks.csv"
    assert sorted(planted.user_ids.tolist()) == sorted(
        real.user_ids.tolist() + [u for u, _ in canaries.planted_users()]
    )
    assert all(str(u).startswith("canary-") for u in canaries.user_ids)


def test_canary_loss_is_the_mean_cross_entropy_of_its_training_part() -> None:
    config = ModelConfig(name="lstm", dim=8, layers=1, dropout=0.0, max_len=6)
    item_ids = [f"i{k}" for k in range(12)]
    torch.manual_seed(0)
    model = build_model(config, len(item_ids))
    checkpoint = Checkpoint(1, model.state_dict(), config, item_ids, "synthetic")
    sequences = [["i3", "i1", "i7", "i4", "i9"], ["i0", "i2", "i5", "i6", "i8", "i10", "i11"]]

    losses = canary_losses(checkpoint, sequences)

    expected = []
    for sequence in sequences:
        trained = [item_ids.index(item) + 1 for item in sequence[:-2]]  # leave-one-out
        items, targets = torch.tensor([trained[:-1]]), torch.tensor([trained[1:]])
        with torch.no_grad():
            expected.append(float(next_item_loss(model.eval(), items, targets, per_sample=True)))
    assert losses == pytest.approx(expected, rel=1e-5)


# --- the command ------------------------------------------------------------------------


def test_cohort_presets_keep_their_number_of_cohorts_with_the_canaries() -> None:
    config = FederatedConfig(partition_mode="cohort", users_per_client=472)  # ml100k-dp
    canaries = make_canaries(np.arange(1, 944), np.arange(1, 1683), 200, 20, seed=0)

    per_cohort = same_cohort_count(config, 943, canaries)

    assert per_cohort == 522
    assert config.num_partitions(943) == 2 == math.ceil((943 + 100) / per_cohort)


def test_bad_canary_settings_are_one_line_errors_before_any_run(
    cycle_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = tmp_path / "tiny.toml"
    preset.write_text(f'dataset = "{cycle_log}"\npartition-mode = "cross-silo"\n')
    results = tmp_path / "results"

    odd = main(["--preset", str(preset), "--canaries", "5", "--results", str(results)])
    odd_err = capsys.readouterr().err.strip().splitlines()
    local = main(["--preset", str(preset), "--set", "dp=local", "--set", "noise-multiplier=1",
                  "--results", str(results)])  # fmt: skip
    local_err = capsys.readouterr().err.strip().splitlines()

    assert (odd, local) == (2, 2)
    assert odd_err == ["error: the number of canaries must be even and at least 4, got 5"]
    assert local_err == ["error: the canary audit covers dp = 'user' and dp = 'none', not 'local'"]
    assert not results.exists()


def test_the_audit_launches_on_the_ray_it_is_given(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: list[tuple[object, ...]] = []

    def no_launch(*args: object) -> None:
        launched.append(args[5:])  # launch_in(folder, label, config, users, port, address, cpus)
        raise canary_audit.LaunchError("not launched")

    monkeypatch.setattr(canary_audit, "launch_in", no_launch)
    monkeypatch.setenv("FEDSEQREC_RAY_CPUS", "1")
    preset = tmp_path / "tiny.toml"
    preset.write_text(f'dataset = "{cycle_log}"\npartition-mode = "cross-silo"\n')
    common = ["--preset", str(preset), "--canaries", "4", "--results", str(tmp_path / "r")]

    codes = [main(common), main([*common, "--ray-cpus", "2"]),
             main([*common, "--ray-address", "head.local:6379"])]  # fmt: skip

    assert codes == [2, 2, 2]
    # the launcher's defaults: $FEDSEQREC_RAY_CPUS, else every CPU; a cluster's address
    assert launched == [("", 1), ("", 2), ("head.local:6379", 1)]


def test_a_bound_above_the_theoretical_epsilon_fails_the_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    is_member = members_first(200)
    losses = np.where(is_member, 1.0, 5.0) + np.linspace(0, 0.5, 200)
    membership = audit_membership(losses, is_member, 1e-4)
    canaries = make_canaries(np.arange(10), np.arange(30), 200, 5, seed=0)
    canaries = CanarySet(canaries.user_ids, canaries.sequences, is_member, 0)
    broken = CanaryAudit(
        tmp_path, "fake", "user", 10, canaries, 5, tmp_path / "u.data", 3,
        {"hr@10": 0.0, "ndcg@10": 0.0}, Guarantee("dp-fedavg", 1.0, 0.9, 1e-4), membership,
        losses,
    )  # fmt: skip
    monkeypatch.setattr(canary_audit, "run_audit", lambda args: broken)

    code = main(["--preset", "ml100k-dp"])

    assert code == 1
    assert broken.exceeds and membership.epsilon_lower_bound > 2.5
    assert (
        capsys.readouterr().out.splitlines()[-1].startswith("FAILED: the empirical lower bound 2.5")
    )
    saved = json.loads((tmp_path / "canary_audit.json").read_text())
    assert saved["exceeds_theoretical"] is True
    assert saved["empirical"]["epsilon_lower_bound"] == membership.epsilon_lower_bound
    assert "PASSED" not in render(broken)


# Tiny federation in which training memorises planted canaries fast: 20 cyclic users plus
# 50 planted canaries of 30 random items (of about 170), one cohort, full-batch gradients
# with FedAdam for 20 rounds.
