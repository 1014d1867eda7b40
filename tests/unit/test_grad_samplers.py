"""Opacus loads only where per-sample gradients are asked for, with our layers' samplers."""

from __future__ import annotations

import subprocess
import sys

from simulations.launch import PROJECT_ROOT

LAUNCH_MODULES = "simulations.launch, server.server_app, client.client_app, deploy.run"


def test_the_apps_and_the_launcher_start_without_opacus() -> None:
    """Each process of a launch imports these; Opacus costs about 1.5 s of CPU there."""
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {LAUNCH_MODULES}; print('opacus' in sys.modules)"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert loaded == "False"


def test_importing_the_registry_registers_every_layer_of_ours() -> None:
    from opacus import GradSampleModule

    import common.models.grad_samplers as samplers

    ours = {
        samplers.AttributeItemEmbedding, samplers.ItemEmbedding, samplers.ScaleFusion,
        samplers.TapConv1d, samplers.SequenceLSTM,
    }  # fmt: skip
    assert ours <= set(GradSampleModule.GRAD_SAMPLERS)
