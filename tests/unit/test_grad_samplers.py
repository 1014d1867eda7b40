"""Opacus, loaded where per-sample gradients are asked for, knows our layers' samplers
(that the apps start without it: ``test_lazy_imports.py``)."""

from __future__ import annotations


def test_importing_the_registry_registers_every_layer_of_ours() -> None:
    from opacus import GradSampleModule

    import common.models.grad_samplers as samplers

    ours = {
        samplers.AttributeItemEmbedding, samplers.ItemEmbedding, samplers.ScaleFusion,
        samplers.TapConv1d, samplers.SequenceLSTM,
    }  # fmt: skip
    assert ours <= set(GradSampleModule.GRAD_SAMPLERS)
