"""``fedseqrec-audit RUN --html`` as a browser shows it: headless Chromium's screenshot.

The run folder is written by the real server code (:func:`tests.helpers.user_dp_run`,
no simulation). The screenshot's pixels are checked: the banner is green for the honest
folder and red for a tampered copy, the page is not blank, the inline SVG charts drew.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.privacy.html_report import FAIL_COLOUR, PASS_COLOUR, RECORDED_COLOUR
from common.privacy.report import main
from tests.helpers import user_dp_run, write_cycle_log

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not on PATH (apt-get install chromium; .ci/run installs it)",
)
WIDTH, HEIGHT = 1200, 1600


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html")
    return user_dp_run(root / "run-a", write_cycle_log(root / "cycle.csv"))


def understate_last_epsilon(run: Path) -> None:
    """Tamper: halve the epsilon the last server entry records."""
    path = run / "ledger" / "server.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[-1])
    record["epsilon"] /= 2
    lines[-1] = json.dumps(record, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")


def screenshot(run: Path, folder: Path) -> tuple[int, np.ndarray]:
    """The audit's exit status and its HTML page as headless Chromium draws it (RGB)."""
    page, image = folder / "report.html", folder / "report.png"
    code = main([str(run), "--html", str(page)])
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={folder / 'chromium-profile'}", f"--screenshot={image}",
        f"--window-size={WIDTH},{HEIGHT}", page.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0 and image.is_file(), done.stderr[-2000:]
    return code, np.asarray(Image.open(image).convert("RGB"), dtype=np.int16)


def share_of(pixels: np.ndarray, colour: str, tolerance: int = 12) -> float:
    """The fraction of ``pixels`` within ``tolerance`` of ``colour`` ("#rrggbb") per channel."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return float(np.all(np.abs(pixels - rgb) <= tolerance, axis=-1).mean())


def test_an_honest_run_shows_a_green_banner_and_its_charts(
    honest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code, pixels = screenshot(honest, tmp_path)
    capsys.readouterr()
    # Assert
    assert code == 0
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    banner = pixels[2:14]  # the banner's top padding: nothing but its colour
    assert share_of(banner, PASS_COLOUR) > 0.99
    assert share_of(banner, FAIL_COLOUR) == 0.0
    body = pixels[400:]
    assert (body.sum(axis=-1) < 250).mean() > 0.002, "no dark text below the banner"
    assert len(np.unique(body.reshape(-1, 3), axis=0)) > 50, "the page is blank"
    assert share_of(body, RECORDED_COLOUR, tolerance=30) > 0.0002, "no epsilon line drawn"


def test_a_tampered_run_shows_a_red_banner(
    honest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run = Path(shutil.copytree(honest, tmp_path / "run-a"))
    understate_last_epsilon(run)
    # Execute
    code, pixels = screenshot(run, tmp_path)
    capsys.readouterr()
    # Assert
    assert code == 1
    banner = pixels[2:14]
    assert share_of(banner, FAIL_COLOUR) > 0.99
    assert share_of(banner, PASS_COLOUR) == 0.0
    assert len(np.unique(pixels[400:].reshape(-1, 3), axis=0)) > 50, "the page is blank"
