"""Secure aggregation: settings, range checks and, end to end, SecAgg+ equals FedAvg."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from common.federation.config import FederatedConfig
from common.federation.messages import load_arrays
from common.federation.secure_aggregation import (
    arrays_from_ndarrays,
    check_round_size,
    check_weighted_range,
    model_ndarrays,
    share_setting,
)
from common.models import build_model
from server.secure_aggregation import client_reason


def test_share_settings_above_one_are_counts_and_below_are_fractions() -> None:
    assert share_setting(3.0, "k") == 3 and isinstance(share_setting(3.0, "k"), int)
    assert share_setting(0.5, "k") == 0.5
    assert share_setting(1, "k") == 1.0 and isinstance(share_setting(1, "k"), float)
    with pytest.raises(ValueError, match="k above 1 is a number of clients and must be whole"):
        share_setting(2.5, "k")
    with pytest.raises(ValueError, match="k must be > 0"):
        share_setting(0.0, "k")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"strategy": "fedadam"}, "secure-aggregation works with strategy fedavg or fedprox"),
        ({"fraction-evaluate": 0.5}, "secure-aggregation needs fraction-evaluate = 0"),
        ({"secagg-num-shares": 5, "secagg-reconstruction-threshold": 5}, r"threshold \(5\)"),
        ({"secagg-num-shares": 2}, "secagg-num-shares as a count must be at least 3"),
        ({"secagg-quantization-range": 2**32}, "secagg-quantization-range must be in"),
    ],
)
def test_config_refuses_settings_secagg_cannot_serve(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederatedConfig.from_run_config({"secure-aggregation": True, **keys})


def test_config_keeps_other_strategies_when_secure_aggregation_is_off() -> None:
    config = FederatedConfig.from_run_config({"strategy": "fedadam", "fraction-evaluate": 0.5})

    assert not config.secure_aggregation and config.strategy == "fedadam"


def test_round_size_needs_two_clients_and_no_overflow() -> None:
    config = FederatedConfig(secure_aggregation=True, secagg_quantization_range=2**22)

    check_round_size(1023, config)  # 1023 * 2**22 < 2**32
    with pytest.raises(ValueError, match="at least 2 clients per round"):
        check_round_size(1, config)
    with pytest.raises(ValueError, match="1024 clients per round overflows"):
        check_round_size(1024, config)


def test_weighted_range_check_names_the_key_to_raise() -> None:
    config = FederatedConfig(secagg_max_weight=100.0, secagg_clipping_range=2.0)
    arrays = [np.array([0.5, -3.0], dtype=np.float32)]

    check_weighted_range(50, arrays, config)  # 3.0 * 50 / 100 = 1.5 <= 2
    with pytest.raises(ValueError, match="reaches 2.4, beyond secagg-clipping-range 2"):
        check_weighted_range(80, arrays, config)
    with pytest.raises(ValueError, match="has 101 examples, more than secagg-max-weight 100"):
        check_weighted_range(101, arrays, config)


def test_legacy_parameter_list_round_trips_through_the_model() -> None:
    config = FederatedConfig(model="lstm", dim=8, max_len=10)
    torch.manual_seed(0)
    source, target = build_model(config.model_config(), 30), build_model(config.model_config(), 30)
    ndarrays = model_ndarrays(source)

    load_arrays(target, arrays_from_ndarrays(target, ndarrays))

    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="got 1 arrays for a model of"):
        arrays_from_ndarrays(target, ndarrays[:1])


def test_client_reason_unwraps_the_ray_traceback() -> None:
    wrapped = (
        "Error(code=2, reason='<class RayTaskError>:<ray::ClientAppActor.run() ...\\n"
        "Exception ClientAppException occurred. Message: this client has 22 examples\\'>')"
    )

    assert client_reason(Exception(wrapped)) == "this client has 22 examples"
    assert client_reason(Exception("plain")) == "plain"
