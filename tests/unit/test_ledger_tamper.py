"""The tamper corpus: every kind of edit to a real run folder fails the audit, by name.

The run folder is written by the real server code (:func:`tests.helpers.user_dp_run`:
UserLevelPrivacy records 4 rounds of 20 users, RunRecorder writes metrics, checkpoints
and summary); each case edits a copy and runs ``fedseqrec-audit`` on it. Edits that are
harmless in themselves (an overstated epsilon, a changed time) are still caught by the
hash chain; docs/privacy-audit.md lists why each one matters.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from common.privacy.accounting import rdp_epsilon
from common.privacy.ledger import GENESIS, LedgerEntry, PrivacyLedger, line_hash, read_ledger
from common.privacy.ledger_heads import ledger_heads
from common.privacy.report import main
from tests.helpers import user_dp_run, write_cycle_log

Edit = Callable[[Path], None]


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One honest 4-round user-level DP run folder, shared read-only by every case."""
    root = tmp_path_factory.mktemp("honest")
    return user_dp_run(root / "run-a", write_cycle_log(root / "cycle.csv"))


def server_lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "ledger" / "server.jsonl").read_text().splitlines()]


def write_lines(run: Path, records: list[dict[str, Any]], rechain: bool = False) -> None:
    """Write server.jsonl; ``rechain`` recomputes every prev_hash (a careful forger)."""
    lines, previous = [], GENESIS
    for record in records:
        if rechain:
            record = {**record, "prev_hash": previous}
        line = LedgerEntry(**record).to_json() if rechain else json.dumps(record, sort_keys=True)
        previous = line_hash(line.encode())
        lines.append(line)
    (run / "ledger" / "server.jsonl").write_text("\n".join(lines) + "\n")


def change(line: int, **fields: object) -> Edit:
    def edit(run: Path) -> None:
        records = server_lines(run)
        records[line - 1].update(fields)
        write_lines(run, records)

    return edit


def drop(*lines: int) -> Edit:
    def edit(run: Path) -> None:
        write_lines(run, [r for n, r in enumerate(server_lines(run), 1) if n not in lines])

    return edit


def duplicate(run: Path) -> None:
    records = server_lines(run)
    write_lines(run, [*records[:2], records[1], *records[2:]])


def reorder(run: Path) -> None:
    records = server_lines(run)
    write_lines(run, [records[0], records[2], records[1], records[3]])


def cut_last_line(run: Path) -> None:
    path = run / "ledger" / "server.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 80])


def forge_noise(run: Path, fix_summary: bool = False) -> None:
    """More noise claimed for every round, epsilons recomputed, the chain rebuilt."""
    records = server_lines(run)
    releases = []
    for record in records:
        record["noise_multiplier"] = 2.0
        releases.append(LedgerEntry(**record).release())
        record["epsilon"] = rdp_epsilon(releases, record["delta"])
    write_lines(run, records, rechain=True)
    if fix_summary:
        summary = json.loads((run / "summary.json").read_text())
        summary["ledger"] = ledger_heads(run / "ledger")
        (run / "summary.json").write_text(json.dumps(summary))


def edit_summary(**changes: object) -> Edit:
    def edit(run: Path) -> None:
        summary = json.loads((run / "summary.json").read_text())
        for key, value in changes.items():
            if value is None:
                summary.pop(key)
            else:
                summary[key] = value
        (run / "summary.json").write_text(json.dumps(summary))

    return edit


def append_forged(run: Path) -> None:
    last = read_ledger(run / "ledger" / "server.jsonl")[-1]
    PrivacyLedger(run / "ledger" / "server.jsonl").append(
        LedgerEntry(**{**last.__dict__, "round": 5})
    )


def strip_checkpoint_head(run: Path) -> None:
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    raw.pop("ledger")
    torch.save(raw, run / "checkpoint.pt")


def kill_before_summary(run: Path) -> None:
    """What a run killed before it finished leaves: config.json, no summary.json."""
    summary = json.loads((run / "summary.json").read_text())
    (run / "config.json").write_text(json.dumps({"run_config": summary["config"]}))
    (run / "summary.json").unlink()


def cut_tail_of_killed_run(run: Path) -> None:
    kill_before_summary(run)
    drop(4)(run)


def delete_ledger(run: Path) -> None:
    (run / "ledger" / "server.jsonl").unlink()


def rewrite_heads(run: Path) -> None:
    """A careful forger: summary.json's and checkpoint.pt's ledger heads made to match."""
    heads = ledger_heads(run / "ledger")
    summary = json.loads((run / "summary.json").read_text())
    summary["ledger"] = heads
    (run / "summary.json").write_text(json.dumps(summary))
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    raw["ledger"] = heads
    torch.save(raw, run / "checkpoint.pt")


def forge_consistently(run: Path, **fields: object) -> None:
    """Every entry changed, epsilons recomputed by our own accountant, chain and heads redone."""
    records, releases = server_lines(run), []
    for record in records:
        record.update(fields)
        releases.append(LedgerEntry(**record).release())
        record["epsilon"] = rdp_epsilon(releases, record["delta"])
    write_lines(run, records, rechain=True)
    rewrite_heads(run)


def hide_last_round(run: Path) -> None:
    """Round 4 gone from ledger, summary, metrics and heads; checkpoint.pt still round 4's."""
    write_lines(run, server_lines(run)[:3], rechain=True)
    metrics = (run / "metrics.csv").read_text().splitlines(keepends=True)
    (run / "metrics.csv").write_text("".join(metrics[:-1]))
    summary = json.loads((run / "summary.json").read_text())
    summary.update(rounds=3, released_round=3)
    summary["privacy"]["epsilon"] = server_lines(run)[-1]["epsilon"]
    (run / "summary.json").write_text(json.dumps(summary))
    rewrite_heads(run)


def set_config(**changes: object) -> Edit:
    def edit(run: Path) -> None:
        summary = json.loads((run / "summary.json").read_text())
        summary["config"].update(changes)
        (run / "summary.json").write_text(json.dumps(summary))

    return edit


def set_privacy(**changes: object) -> Edit:
    def edit(run: Path) -> None:
        summary = json.loads((run / "summary.json").read_text())
        summary["privacy"].update(changes)
        (run / "summary.json").write_text(json.dumps(summary))

    return edit


def add_file(relative: str, source: str = "checkpoint.pt") -> Edit:
    def edit(run: Path) -> None:
        target = run / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / source, target) if source else target.write_text("x")

    return edit


def set_checkpoint_round(value: int) -> Edit:
    def edit(run: Path) -> None:
        raw = torch.load(run / "checkpoint.pt", weights_only=True)
        raw["round"] = value
        torch.save(raw, run / "checkpoint.pt")

    return edit


def unledgered_statistics(run: Path) -> None:
    """Statistics released without their entry, and the summary saying the run is not DP."""
    from common.privacy.statistics import release_statistics

    release_statistics([[1, 2, 3]], [[1], [1], [2], [2]], 3, 4.0, 1e-3).save(run / "statistics.npz")
    set_config(dp="none")(run)


def relabel_seeded_run(run: Path) -> None:
    """A run whose noise was seeded, relabelled os-entropy in ledger, config and heads."""
    shutil.rmtree(run)
    user_dp_run(run, write_cycle_log(run.parent / "cycle.csv"), insecure=True)
    write_lines(run, [{**r, "randomness": "os-entropy"} for r in server_lines(run)], rechain=True)
    set_config(**{"insecure-reproducible-noise": False})(run)
    set_privacy(randomness="os-entropy")(run)
    rewrite_heads(run)


def forged_then_checkpoint_deleted(run: Path) -> None:
    forge_consistently(run, noise_multiplier=2.0)
    (run / "checkpoint.pt").unlink()


CORPUS: dict[str, tuple[Edit, str]] = {
    "deleted middle line": (drop(2), "entry 2 does not chain to entry 1"),
    "deleted middle line, round": (drop(2), "round 2 released but not in the ledger"),
    "deleted tail lines": (drop(3, 4), "round 3 released but not in the ledger"),
    "deleted first line": (drop(1), "entry 1 does not chain to the genesis value"),
    "cut last line": (cut_last_line, "round 4 released but not in the ledger"),
    "duplicated entry": (duplicate, "entry 3 duplicated (same as entry 2)"),
    "reordered entries": (reorder, "server round 2 after round 3"),
    "changed noise multiplier": (change(2, noise_multiplier=3.0), "entry 3 does not chain"),
    "lowered noise, last entry": (change(4, noise_multiplier=0.5), "epsilon is understated"),
    "changed epsilon": (change(4, epsilon=0.01), "the epsilon is understated"),
    "raised epsilon (harmless)": (change(4, epsilon=99.0), "entries up to it were changed"),
    "changed delta": (change(1, delta=1e-4), "entry 2 does not chain to entry 1"),
    "changed run id": (change(4, run_id="other"), "run id 'other' is neither this run's"),
    "changed party": (change(3, who="node-x"), "round 3 released but not in the ledger"),
    "changed sampling rate": (change(2, sampling_rate=0.1), "entry 3 does not chain"),
    "changed round": (change(4, round=5), "round 4 released but not in the ledger"),
    "changed time (harmless)": (change(1, time=0.0), "entry 2 does not chain to entry 1"),
    "population inflated": (change(4, population=943), "delta 5e-3 above 1 / (10 x 943)"),
    "consistent forgery": (forge_noise, "summary.json records entry 4 of server.jsonl"),
    "consistent forgery and summary": (
        lambda run: forge_noise(run, fix_summary=True),
        "checkpoint.pt (round 4) records entry 4 of server.jsonl",
    ),
    "forged entry appended": (append_forged, "entries were added after it"),
    "removed summary head": (edit_summary(ledger=None), "summary.json records no ledger head"),
    "summary of another run": (edit_summary(run_id="run-b"), "neither this run's ('run-b')"),
    "removed checkpoint head": (strip_checkpoint_head, "checkpoint.pt records no ledger head"),
    "deleted server ledger": (delete_ledger, "no ledger found"),
    "tail cut, summary deleted": (cut_tail_of_killed_run, "round 4 released but not in the"),
    "summary and config deleted": (
        lambda run: (run / "summary.json").unlink(),
        "summary.json and config.json are missing",
    ),
    # consistent forgeries (chain and heads recomputed) and cross-checks of the folder
    "doubled noise, chain and heads rewritten": (
        lambda run: forge_consistently(run, noise_multiplier=2.0),
        "round 1 carries less noise than its ledger entry claims",
    ),
    "seeded noise relabelled os-entropy, config too": (
        relabel_seeded_run,
        "noise witness is exactly the noise that seed 42 regenerates",
    ),
    "released model deleted": (
        lambda run: (run / "checkpoint.pt").unlink(),
        "checkpoint.pt is missing, but the ledger records model releases up to round 4",
    ),
    "doubled noise, heads rewritten, model deleted": (
        forged_then_checkpoint_deleted,
        "checkpoint.pt is missing, but the ledger records model releases up to round 4",
    ),
    "last round hidden everywhere but the model": (
        hide_last_round,
        "is the model of round 4, but the ledger's last server release is round 3",
    ),
    "population shrunk with delta, heads rewritten": (
        lambda run: forge_consistently(run, population=2, delta=0.05),
        "the ledger protects a population of 2, but the data set",
    ),
    "statistics without entry, summary says dp none": (
        unledgered_statistics,
        "statistics.npz released but no dp-statistics entry of this run is in the ledger",
    ),
    "summary says dp none": (set_config(dp="none"), "says dp = none, but the ledger records 4"),
    "config asks for seeded noise, ledger says os-entropy": (
        set_config(**{"insecure-reproducible-noise": True}),
        "the ledger labels 4 release(s) 'os-entropy': relabelled noise",
    ),
    "false epsilon in summary": (set_privacy(epsilon=1.0), "states epsilon 1.0, but the ledger's"),
    "false noise multiplier in summary": (
        set_privacy(noise_multiplier=2.0),
        "states noise_multiplier 2.0, but the ledger's dp-fedavg entry of round 4 records 1.0",
    ),
    "false population in summary": (set_privacy(population=943), "states population 943"),
    "released round changed in summary": (
        edit_summary(released_round=3),
        "says round 3 was released, but",
    ),
    "model round raised": (set_checkpoint_round(9), "is the model of round 9, but the ledger"),
    "extra best_checkpoint.pt": (
        add_file("best_checkpoint.pt"),
        "best_checkpoint.pt is neither a ledgered release nor a harmless file",
    ),
    "a model in state/": (add_file("state/model-round-9.pt"), "a model no ledger entry accounts"),
    "leftover statistics.npz.pending": (
        add_file("statistics.npz.pending"),
        "a leftover temporary copy of a release",
    ),
    "second statistics file": (
        add_file("statistics-2.npz"),
        "statistics-2.npz is neither a ledgered release",
    ),
    "model hidden in a subfolder": (add_file("extra/m.pt"), "extra/m.pt is neither a ledgered"),
    "leftover temporary checkpoint": (
        add_file(".checkpoint.pt.x1y2"),
        "a leftover temporary copy of a release",
    ),
    "unknown file": (add_file("notes.txt", ""), "notes.txt is neither a ledgered release"),
}

# Edits the audit accepts, and why they are harmless (docs/privacy-audit.md, HARMLESS):
HARMLESS_EDITS: dict[str, Edit] = {
    # the logs, plots and reports are written from simulation-only diagnostics or from
    # the ledger itself: they release nothing the ledger must account for
    "flwr.log rewritten": add_file("flwr.log", ""),
    "plot replaced": add_file("valid_ndcg.png", ""),
    "an audit report saved in the folder": add_file("report.html", ""),
    "old launch logs kept": add_file("superlink.1.log", ""),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_tampering_fails_the_audit_naming_it(
    honest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    # Prepare
    edit, message = CORPUS[name]
    run = tmp_path / honest.name
    shutil.copytree(honest, run)
    edit(run)
    # Execute
    code = main([str(run)])
    captured = capsys.readouterr()
    # Assert
    assert code != 0, captured.out
    assert message in captured.out + captured.err


def test_the_honest_run_passes(honest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(honest)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASSED" in out
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("name", sorted(HARMLESS_EDITS))
def test_harmless_edits_pass(
    honest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    run = tmp_path / honest.name
    shutil.copytree(honest, run)
    HARMLESS_EDITS[name](run)
    code = main([str(run)])
    assert code == 0, capsys.readouterr().out


def test_insecure_reproducible_noise_is_never_certified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = user_dp_run(tmp_path / "run-x", write_cycle_log(tmp_path / "c.csv"), 2, insecure=True)
    code = main([str(run)])
    out = capsys.readouterr().out
    assert code == 1
    assert "NOT PRIVATE: 2 release(s) of server" in out
    assert {e.randomness for e in read_ledger(run / "ledger" / "server.jsonl")} == {
        "insecure-reproducible"
    }


def test_a_run_killed_before_its_summary_passes_with_a_note(
    honest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / honest.name
    shutil.copytree(honest, run)
    kill_before_summary(run)
    code = main([str(run)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "summary.json is missing (the run did not finish)" in out


def test_a_killed_run_may_hold_a_write_the_kill_cut_short(
    honest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: killed before its summary, mid-way through writing a checkpoint
    run = tmp_path / honest.name
    shutil.copytree(honest, run)
    kill_before_summary(run)
    add_file(".checkpoint.pt.k1ll3d")(run)
    add_file("state/model-round-4.pt")(run)  # linked before the state naming it was saved
    # Execute
    code = main([str(run)])
    # Assert: not an unaccounted release (its round was ledgered first); a finished run
    # holding the same file fails ("leftover temporary checkpoint" in the corpus)
    assert code == 0, capsys.readouterr().out
