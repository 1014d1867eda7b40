"""Our layers' per-sample gradient functions, registered with Opacus on import.

Importing Opacus costs about 1.5 s of CPU (its accountants pull in SciPy's statistics and
torch.distributed). Every process of a launch that builds a model (the launcher, the
ServerApp, each client) used to pay it because the layer modules registered their grad
samplers at import time; now only code that asks Opacus for per-sample gradients pays
it, by importing this module first (:mod:`common.training.clipping` does, and so must a
caller that wraps one of our models in Opacus's ``GradSampleModule`` or
``PrivacyEngine`` itself).
"""

from __future__ import annotations

from opacus.grad_sample import register_grad_sampler

from common.models.attribute_embedding import (
    AttributeItemEmbedding,
    attribute_embedding_grad_sample,
)
from common.models.item_embedding import ItemEmbedding, item_embedding_grad_sample
from common.models.multiscale import (
    ScaleFusion,
    TapConv1d,
    scale_fusion_grad_sample,
    tap_conv_grad_sample,
)
from common.models.recurrent import SequenceLSTM, sequence_lstm_grad_sample

register_grad_sampler(AttributeItemEmbedding)(attribute_embedding_grad_sample)
register_grad_sampler(ItemEmbedding)(item_embedding_grad_sample)
register_grad_sampler(ScaleFusion)(scale_fusion_grad_sample)
register_grad_sampler(TapConv1d)(tap_conv_grad_sample)
register_grad_sampler(SequenceLSTM)(sequence_lstm_grad_sample)
