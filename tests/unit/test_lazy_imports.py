"""The processes of a launch load no library they do not use: each costs CPU at every start."""

from __future__ import annotations

import subprocess
import sys

from simulations.launch import PROJECT_ROOT

LAUNCH_MODULES = "simulations.launch, server.server_app, client.client_app, deploy.run"
# Opacus (about 1.5 s of CPU) loads where per-sample gradients are asked for; Matplotlib
# (about 0.3 s) where a plot is drawn; SciPy's statistics (about 0.8 s) where an audit
# measures noise
DEFERRED = ("opacus", "matplotlib", "scipy.stats")


def test_the_apps_and_the_launcher_start_without_opacus_matplotlib_or_scipy_stats() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c",
         f"import sys, {LAUNCH_MODULES}; print(*(m in sys.modules for m in {DEFERRED!r}))"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert loaded == ["False"] * len(DEFERRED)
