"""What travels in Flower messages: record keys, and the model as an ArrayRecord."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

WEIGHT_KEY = "num-examples"
POPULATION_KEY = "population"  # train config: users protected, for delta (ledger, 14.4)


def model_to_arrays(model: torch.nn.Module) -> ArrayRecord:
    """Parameters in ``named_parameters()`` order; shared or aliased tensors appear once."""
    return ArrayRecord(
        {
            name: Array(param.detach().cpu().numpy().copy())
            for name, param in model.named_parameters()
        }
    )


def load_arrays(model: torch.nn.Module, arrays: ArrayRecord) -> None:
    """Copy an ArrayRecord into the model's parameters; names and shapes must match."""
    params = dict(model.named_parameters())
    missing, unexpected = set(params) - set(arrays), set(arrays) - set(params)
    if missing or unexpected:
        raise ValueError(
            f"ArrayRecord does not match the model: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = torch.from_numpy(np.asarray(arrays[name].numpy()))
            if value.shape != param.shape:
                raise ValueError(
                    f"{name}: shape {tuple(value.shape)} does not match the model's "
                    f"{tuple(param.shape)}"
                )
            param.copy_(value)
