"""The console shows our own progress lines; everything else goes to the run's log only."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from simulations.flower_log import shown_on_console, stream_flwr_run


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("\x1b[92mINFO \x1b[0m:      [ROUND 1/30]\n", False),
        ("INFO :      configure_train: Sampled 7 nodes (out of 7)\n", False),
        ("Successfully installed fedseqrec to /tmp/x.\n", False),
        ("INFO fedseqrec.server: round 1/30 | clients 943/943 | loss 7.1\n", True),
        ("WARNING fedseqrec.server: round 3 degraded: 8 valid replies of 10\n", True),
        ("ERROR fedseqrec.server.detail: node 4 failed in round 3 (train): boom\n", False),
        ("\x1b[93mWARNING \x1b[0m:   fraction_evaluate is set to 0.0.\n", False),
        ("\x1b[91mERROR \x1b[0m:     ServerApp raised an exception\n", False),
        ("ValueError: delta 0.01 above 1 / (10 x 943)\n", False),
        ("(raylet) A worker died or was killed while executing a task\n", False),
        ("\u2570\u2500\u2500\u2500\u2500\u256f\n", False),
    ],
)
def test_only_our_own_progress_lines_reach_the_console(line: str, shown: bool) -> None:
    assert shown_on_console(line) is shown


def test_every_line_reaches_the_log_and_the_filtered_ones_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = "print('INFO :      chatter'); print('INFO fedseqrec.server: round 1'); exit(3)"
    log = tmp_path / "flwr.log"

    code = stream_flwr_run([sys.executable, "-c", script], {}, tmp_path, log)

    assert code == 3
    assert log.read_text() == "INFO :      chatter\nINFO fedseqrec.server: round 1\n"
    assert capsys.readouterr().out == "INFO fedseqrec.server: round 1\n"
