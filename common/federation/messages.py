"""What travels in Flower messages: every record name and key, and the model as an ArrayRecord.

Client and server name these only through the constants below (Flower's own keys
included, passed to its strategies explicitly), so a key cannot drift on one side.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

# Records of a Message's RecordDict.
ARRAYS = "arrays"  # ArrayRecord: the global model (to clients), the update (replies)
METRICS = "metrics"  # MetricRecord of a reply
CONFIG = "config"  # ConfigRecord the server sends with each message

# Keys of the server's ConfigRecord.
STAGE = "stage"  # which split a message is about: TRAIN_STAGE or VALID_STAGE
TRAIN_STAGE = "train"
VALID_STAGE = "valid"
TEST_STAGE = "test"
SERVER_ROUND = "server-round"  # set by Flower's strategies
ROUND_OFFSET = "round-offset"  # rounds of the checkpoint this run continues from
ROUND_ATTEMPT = "round-attempt"  # 1, or 2.. when the server asks a failed client again
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx
POPULATION_KEY = "population"  # users the federation protects (public), for delta
TRANSITIONS_PER_USER = "transitions-per-user"  # query: a user's transitions counted
# What the server announces for the nodes' signed receipts (common/privacy/node_receipts.py).
LEDGER_RUN_ID = "ledger-run-id"  # the run id of the server's ledger (its run folder's name)
DP_MECHANISM = "dp-mechanism"  # the server's DP mechanism ("dp-fedavg"); absent: no server noise
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"  # noise std / clip norm of each round's release
DP_CLIP_NORM = "dp-clip-norm"  # the bound on one user's update
DP_SAMPLING_RATE = "dp-sampling-rate"  # Poisson rate of users per round
LEDGER_PUBLIC_KEY = "ledger-public-key"  # OpenSSH public key that signs the server's ledger

# Records of a statistics reply (query message; common/privacy/statistics.py).
POPULARITY = "popularity"  # dense sum of the client's users' popularity vectors
TRANSITION_CELLS = "transition-cells"  # flat cells a * (n_items + 1) + j of the sum
TRANSITION_VALUES = "transition-values"  # the sum's values in those cells

# Keys of a reply's MetricRecord (sums: the server adds them up over replies).
WEIGHT_KEY = "num-examples"  # the example count Flower's strategies weight by
TRAIN_LOSS = "train_loss"  # mean local training loss
EPSILON = "epsilon"  # dp = local: this client's epsilon so far
USERS = "clients"  # cohorts: users whose updates the sum holds
CLIPPED = "clipped"  # cohorts: users whose update was clipped
NON_FINITE = "non-finite"  # cohorts: users whose update was not finite (they added zero)
UPDATE_BYTES_KEY = "update-bytes"  # bytes of the arrays a client sent


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
