"""Noise evidence: the audit measures the noise the released files carry (issue item 1).

The estimator (:mod:`common.privacy.noise_evidence`) on fixed seeds, then the audit of
real run folders (written by the server's code: UserLevelPrivacy, CohortAggregation,
the statistics release, RunRecorder) whose ledger a forger rewrote consistently: more
noise claimed, epsilons recomputed, hash chain rebuilt, the heads in summary.json and
every checkpoint rewritten. Only the released files, untouched, give the forger away.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.attributes import load_item_attributes
from common.data.partitioning import load_split
from common.evaluation.on_device import attribute_lists
from common.federation.checkpoints import dataset_item_ids, load_checkpoint
from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from common.models import build_model
from common.privacy.accounting import composed_epsilon
from common.privacy.ledger import GENESIS, LedgerEntry, line_hash, read_ledger
from common.privacy.ledger_heads import ledger_heads
from common.privacy.noise_evidence import FALSE_ALARM_RATE, measure_noise
from common.privacy.run_audit import audit_path
from common.privacy.statistics import DPStatistics, exact_statistics, noisy_release
from server.resume.restore import resume_run
from server.run_recorder import RunRecorder
from server.statistics_release import publish_statistics
from server.user_level_privacy import UserLevelPrivacy
from tests.helpers import (
    killed_dp_run,
    resumable_config,
    resumable_recorder,
    user_dp_run,
    write_cycle_attributes,
    write_cycle_log,
)

CHI_SQUARE = "with confidence 1 - 1e-06, one-sided chi-square"  # per model round
SHARED = "with confidence 1 - 5e-07, one-sided chi-square"  # each of the two statistics


def test_honest_noise_passes_and_half_the_noise_fails() -> None:
    rng = np.random.default_rng(0)
    honest = measure_noise(rng.normal(0.0, 0.3, 1024), 0.3)
    halved = measure_noise(rng.normal(0.0, 0.15, 1024), 0.3)
    assert honest.passed and honest.measured_std == pytest.approx(0.3, rel=0.1)
    assert honest.claimed_std < honest.upper_std < 0.3 * 1.25
    assert not halved.passed and halved.upper_std < 0.3
    assert halved.describe().startswith("the ledger claims noise std 0.3, 1,024 pure-noise")
    assert CHI_SQUARE in halved.describe()


def test_the_false_alarm_rate_is_alpha_on_fixed_seeds() -> None:
    # at alpha = 5% about 5% of honest releases fail; at 1e-6, none of 2,000
    rng = np.random.default_rng(1)
    draws = [rng.normal(0.0, 2.0, 256) for _ in range(2000)]
    loose = sum(not measure_noise(d, 2.0, alpha=0.05).passed for d in draws)
    strict = sum(not measure_noise(d, 2.0).passed for d in draws)
    assert 70 <= loose <= 130  # binomial(2000, 0.05): mean 100, sd 9.7
    assert strict == 0
    assert FALSE_ALARM_RATE == 1e-6


def test_anything_added_to_the_noise_only_raises_the_measurement() -> None:
    noise = np.random.default_rng(2).normal(0.0, 1.0, 1024)
    plain = measure_noise(noise, 1.0)
    shifted = measure_noise(noise + 0.5, 1.0)  # a mean, a malicious client's contribution
    assert shifted.measured_std > plain.measured_std and shifted.upper_std > plain.upper_std


@pytest.mark.parametrize(
    ("values", "claimed", "alpha", "problem"),
    [
        ([], 1.0, 1e-6, "0 pure-noise values, not all finite"),
        ([0.1, np.nan], 1.0, 1e-6, "2 pure-noise values, not all finite"),
        ([0.1], -1.0, 1e-6, "claimed noise std must be finite and >= 0, got -1.0"),
        ([0.1], 1.0, 0.0, r"alpha must be in \(0, 1\), got 0.0"),
    ],
)
def test_nothing_to_measure_is_an_error(
    values: list[float], claimed: float, alpha: float, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        measure_noise(values, claimed, alpha)


def forge(run: Path, factor: float, mechanism: str) -> None:
    """Claim ``factor`` x the noise of every ``mechanism`` entry: epsilons recomputed, chain
    rebuilt, the heads and privacy claims in summary.json and the heads in every checkpoint
    rewritten (only the released files' own noise can then tell)."""
    path = run / "ledger" / "server.jsonl"
    releases, previous, lines = [], GENESIS, []
    for entry in read_ledger(path):
        record = dict(entry.__dict__)
        if entry.mechanism == mechanism:
            record["noise_multiplier"] *= factor
        releases.append(LedgerEntry(**record).release())
        epsilon = composed_epsilon(releases, record["delta"], record["accountant"])
        record.update(epsilon=epsilon, prev_hash=previous)
        line = LedgerEntry(**record).to_json()
        previous = line_hash(line.encode())
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    heads = ledger_heads(run / "ledger")
    summary = json.loads((run / "summary.json").read_text())
    last = LedgerEntry(**json.loads(lines[-1]))
    privacy = {**summary["privacy"], "epsilon": last.epsilon}  # the summary's claims too
    if mechanism == "dp-fedavg":
        privacy["noise_multiplier"] = last.noise_multiplier
    elif privacy.get("statistics"):
        joint = privacy["statistics"]["joint_noise_multiplier"] * factor
        privacy["statistics"] = {**privacy["statistics"], "joint_noise_multiplier": joint}
    summary.update(ledger=heads, privacy=privacy)
    (run / "summary.json").write_text(json.dumps(summary))
    for checkpoint in run.glob("*.pt"):
        raw = torch.load(checkpoint, weights_only=True)
        torch.save({**raw, "ledger": heads}, checkpoint)


@pytest.fixture(scope="module")
def model_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One honest 4-round DP-FedAvg run folder (noise multiplier 1, 20 users, q 0.5)."""
    root = tmp_path_factory.mktemp("model")
    return user_dp_run(root / "run-a", write_cycle_log(root / "cycle.csv"))


def statistics_run(folder: Path, log: Path) -> Path:
    """A statistics-only user-level DP run folder (epsilon 8), as the server leaves it."""
    attributes = write_cycle_attributes(log, folder.parent / "attributes.csv")
    config = FederatedConfig(
        dataset=str(log), model="lstm", dim=8, max_len=6, partition_mode="cohort", dp="user",
        target_epsilon=8.0, statistics=True, item_attributes=str(attributes),
        num_server_rounds=0, results_dir=str(folder),
    )  # fmt: skip
    folder.mkdir(parents=True)
    split = load_split(config.dataset)
    loaded = load_item_attributes(attributes, dataset_item_ids(config.dataset), config.dataset)
    assert loaded is not None
    lists, n_attributes = attribute_lists(loaded)
    privacy = UserLevelPrivacy.from_config(config, split.n_users, folder)
    sums = exact_statistics(split.inputs("test"), lists, n_attributes)
    publish_statistics(folder, noisy_release(*sums, privacy.statistics_multipliers), privacy, 0)
    torch.manual_seed(0)
    recorder = RunRecorder(folder, build_model(config.model_config(), split.n_items), split,
                           config, 10)  # fmt: skip
    recorder.evaluate(0, model_to_arrays(recorder.model))
    recorder.finish(privacy=privacy.summary())
    return folder


@pytest.fixture(scope="module")
def stats_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("statistics")
    return statistics_run(root / "run-s", write_cycle_log(root / "cycle.csv"))


def copied(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / run.name)
    return tmp_path / run.name


def test_honest_runs_pass_with_their_noise_measured(model_run: Path, stats_run: Path) -> None:
    for run, releases in ((model_run, 4), (stats_run, 1)):
        report = audit_path(run)
        assert report.failures == []
        assert f"noise evidence: {releases} release(s) carry at least the noise" in "".join(
            report.notes
        )
    witness = load_checkpoint(model_run / "checkpoint.pt").noise_witness
    assert sorted(witness) == [1, 2, 3, 4] and witness[4].shape == (1024,)
    assert float(witness[4].std()) == pytest.approx(1.0 / 10, rel=0.12)  # z C / (20 x 0.5)


def test_a_doubled_noise_ledger_of_a_dp_fedavg_run_fails(model_run: Path, tmp_path: Path) -> None:
    run = copied(model_run, tmp_path)
    forge(run, 2.0, "dp-fedavg")
    failures = audit_path(run).failures
    assert len(failures) == 4  # every round, and nothing else catches the forgery
    assert re.fullmatch(
        re.escape(f"{run / 'checkpoint.pt'}: round 1 carries less noise than its ledger entry "
                  "claims: the ledger claims noise std 0.2, 1,024 pure-noise values measure ")
        + r"0\.\d+ \(true std at most 0\.1\d* " + re.escape(f"{CHI_SQUARE})"),
        failures[0],
    )  # fmt: skip
    assert all(CHI_SQUARE in failure for failure in failures)


def test_a_doubled_noise_ledger_and_statistics_file_fail(stats_run: Path, tmp_path: Path) -> None:
    run = copied(stats_run, tmp_path)
    forge(run, 2.0, "dp-statistics")
    stats = DPStatistics.load(run / "statistics.npz")  # the file claims it too: same values
    doubled = {name: 2 * z for name, z in stats.noise_multipliers.items()}
    DPStatistics(stats.popularity, stats.attribute_transitions, doubled,
                 stats.noise_witness).save(run / "statistics.npz")  # fmt: skip
    failures = audit_path(run).failures
    assert [f.split(" carries")[0] for f in failures] == [
        f"{run / 'statistics.npz'}: popularity",
        f"{run / 'statistics.npz'}: attribute_transitions",
    ]
    assert "less noise than its ledger entry (round 0) claims" in failures[1]
    assert all(SHARED in failure for failure in failures)


def test_statistics_noise_raised_in_the_ledger_only_fails(stats_run: Path, tmp_path: Path) -> None:
    run = copied(stats_run, tmp_path)
    recorded = read_ledger(run / "ledger" / "server.jsonl")[0].noise_multiplier
    forge(run, 1.5, "dp-statistics")
    failures = audit_path(run).failures
    assert failures[0].startswith(f"{run / 'statistics.npz'} records noise multipliers")
    assert f"(jointly {recorded:.4g}), but its ledger entry (round 0) claims" in failures[0]
    assert len(failures) == 3  # and both statistics measure less than the ledger claims


def test_a_checkpoint_without_its_witness_fails_and_a_lost_round_is_a_note(
    model_run: Path, tmp_path: Path
) -> None:
    stripped, lost = copied(model_run, tmp_path / "a"), copied(model_run, tmp_path / "b")
    raw = torch.load(stripped / "checkpoint.pt", weights_only=True)
    torch.save({**raw, "noise_witness": {}}, stripped / "checkpoint.pt")
    raw = torch.load(lost / "checkpoint.pt", weights_only=True)
    torch.save({**raw, "noise_witness": {1: raw["noise_witness"][1]}}, lost / "checkpoint.pt")
    summary = json.loads((lost / "summary.json").read_text())
    summary["resumed"] = [{"from_round": 1, "continued_after": 4}]  # a crash lost 2-4
    (lost / "summary.json").write_text(json.dumps(summary))
    assert audit_path(stripped).failures == [
        "checkpoint.pt (round 4) carries no noise witness at all for round(s) 1, 2, 3, 4: the "
        "noise their ledger entries claim cannot be measured"
    ]
    report = audit_path(lost)
    assert report.failures == []
    assert "holds no noise witness for round(s) 2, 3, 4: recorded, but a crash" in "".join(
        report.notes
    )


def test_a_resumed_run_keeps_the_witnesses_of_its_saved_rounds(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    killed_dp_run(write_cycle_log(tmp_path / "cycle.csv"), folder, saved=3, released=4)
    saved = load_checkpoint(folder / "checkpoint.pt").noise_witness
    config = resumable_config(tmp_path / "cycle.csv", folder, resume_from=str(folder))
    recorder = resumable_recorder(config)
    resume_run(config, recorder.model, recorder)
    assert sorted(recorder.noise_witness) == [1, 2, 3]  # round 4 was lost with its model
    assert all(np.array_equal(recorder.noise_witness[r], saved[r].numpy()) for r in saved)
