"""Checks of one client's training reply before it may be aggregated.

A reply is refused, with the reason, when its ArrayRecord does not match the global
model (names, shapes, dtypes), holds a non-finite value, when its weight is not a finite
non-negative number, or when its update is larger (L2 norm over all arrays) than
``max-update-norm``. Per-client replies carry new weights, so their update is the
difference to the global arrays of the round; cohort replies already carry a sum of
updates (each user's update was clipped, and non-finite users dropped, on the client:
:func:`common.training.clipping.clip_factors`).
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Message

from common.federation.messages import ARRAYS, METRICS, WEIGHT_KEY


def reply_problem(
    reply: Message, reference: ArrayRecord, *, deltas: bool, max_update_norm: float = 0.0
) -> str:
    """Why a (non-error) train reply may not be aggregated, or '' when it may."""
    arrays = reply.content.array_records.get(ARRAYS)
    metrics = reply.content.metric_records.get(METRICS)
    if not isinstance(arrays, ArrayRecord) or metrics is None:
        return f"it lacks the {ARRAYS!r} ArrayRecord or the {METRICS!r} MetricRecord"
    weight = metrics.get(WEIGHT_KEY)
    if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        return f"weight {WEIGHT_KEY!r} = {weight!r} is not a finite non-negative number"
    return update_problem(arrays, reference, deltas=deltas, max_update_norm=max_update_norm)


def update_problem(
    arrays: ArrayRecord, reference: ArrayRecord, *, deltas: bool, max_update_norm: float = 0.0
) -> str:
    """Why ``arrays`` is not a valid update of ``reference`` (see module docstring), or ''."""
    if set(arrays) != set(reference):
        missing, unexpected = (
            sorted(set(reference) - set(arrays)),
            sorted(set(arrays) - set(reference)),
        )
        return f"arrays do not match the model: missing {missing}, unexpected {unexpected}"
    squared = 0.0
    for name in reference:
        expected = reference[name].numpy()
        value = arrays[name].numpy()
        if value.shape != expected.shape:
            return f"{name!r} has shape {value.shape}, the model's is {expected.shape}"
        # Flower's adaptive strategies hold the global arrays in float64 after round 1,
        # while clients reply in the model's float32: any floating dtype is an update
        if value.dtype != expected.dtype and not value.dtype.kind == expected.dtype.kind == "f":
            return f"{name!r} has dtype {value.dtype}, the model's is {expected.dtype}"
        if not np.isfinite(value).all():
            return f"{name!r} has non-finite values"
        update = value if deltas else value.astype(np.float64) - expected
        squared += float(np.square(update, dtype=np.float64).sum())
    norm = math.sqrt(squared)
    if max_update_norm > 0 and norm > max_update_norm:
        return f"update norm {norm:.4g} exceeds max-update-norm {max_update_norm:g}"
    return ""
