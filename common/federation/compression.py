"""Compressed model updates for slow edge links: float16 or 8-bit quantized deltas.

A client sends ``update = local - global`` instead of its weights: updates are small
and centred on zero, so they survive a narrow number format far better than the
weights do. Formats (run-config key ``update-compression``):

- ``none``: the local weights as float32 (Flower's usual reply),
- ``float16``: the update in half precision (2 bytes a value),
- ``int8``: the update quantized symmetrically per row (first axis; per tensor for
  vectors), ``q = round(update / scale)`` with ``scale = max |row| / 127``; the
  float32 scales travel beside it under ``<name>@scale`` (1 byte a value plus 4 a row).

The server turns every reply back into float32 weights (:func:`decode_update`) before
its strategy aggregates, so FedAvg, FedAdam and friends run unchanged. Round-trip
error: float16 about 2**-11 relative per value; int8 at most ``scale / 2`` per value.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from common.federation.messages import UPDATE_BYTES_KEY as UPDATE_BYTES_KEY  # re-exported

COMPRESSIONS = ("none", "float16", "int8")
SCALE_SUFFIX = "@scale"
INT8_LEVELS = 127


def _check_method(method: str) -> None:
    if method not in COMPRESSIONS:
        raise ValueError(
            f"update-compression must be one of {', '.join(COMPRESSIONS)}, got {method!r}"
        )


def _as_float32(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: np.asarray(array.numpy(), dtype=np.float32) for name, array in record.items()}


def quantize_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 codes and float32 scales (one per row, or one for a vector)."""
    rows = values.reshape(values.shape[0], -1) if values.ndim > 1 else values.reshape(1, -1)
    scales = (np.abs(rows).max(axis=1) / INT8_LEVELS).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    codes = np.clip(np.rint(rows / safe[:, None]), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return codes.reshape(values.shape), scales


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Float32 values back from :func:`quantize_int8`'s codes and scales."""
    rows = codes.reshape(len(scales), -1).astype(np.float32) * scales[:, None]
    return rows.reshape(codes.shape)


def encode_update(local: ArrayRecord, reference: ArrayRecord, method: str) -> ArrayRecord:
    """What a client sends: its weights (``none``) or its compressed update to ``reference``."""
    _check_method(method)
    if method == "none":
        return local
    if set(local) != set(reference):
        raise ValueError(
            f"local and global arrays differ in names: {sorted(set(local) ^ set(reference))}"
        )
    base = _as_float32(reference)
    encoded: dict[str, Array] = {}
    for name, values in _as_float32(local).items():
        update = values - base[name]
        if method == "float16":
            half = update.astype(np.float16)
            if not np.isfinite(half).all():
                raise ValueError(f"{name}: update exceeds the float16 range; use int8 or none")
            encoded[name] = Array(half)
        else:
            codes, scales = quantize_int8(update)
            encoded[name] = Array(codes)
            encoded[name + SCALE_SUFFIX] = Array(scales)
    return ArrayRecord(encoded)  # type: ignore[arg-type]


def decode_update(encoded: ArrayRecord, reference: ArrayRecord, method: str) -> ArrayRecord:
    """Float32 weights from a reply encoded by :func:`encode_update` against ``reference``."""
    _check_method(method)
    if method == "none":
        return encoded
    expected = set(reference)
    if method == "int8":
        expected |= {name + SCALE_SUFFIX for name in reference}
    if set(encoded) != expected:
        raise ValueError(
            f"a {method} update does not match the global model: missing "
            f"{sorted(expected - set(encoded))}, unexpected {sorted(set(encoded) - expected)}"
        )
    wanted = np.float16 if method == "float16" else np.int8
    weights: dict[str, Array] = {}
    for name, base in _as_float32(reference).items():
        payload = encoded[name].numpy()
        if payload.dtype != wanted or payload.shape != base.shape:
            raise ValueError(
                f"{name}: expected a {np.dtype(wanted).name} update of shape {base.shape}, "
                f"got {payload.dtype.name} {payload.shape}"
            )
        if method == "float16":
            update = payload.astype(np.float32)
        else:
            scales = np.asarray(encoded[name + SCALE_SUFFIX].numpy(), dtype=np.float32)
            rows = base.shape[0] if base.ndim > 1 else 1
            if scales.shape != (rows,):
                raise ValueError(f"{name}: expected {rows} int8 scales, got shape {scales.shape}")
            update = dequantize_int8(payload, scales)
        weights[name] = Array(base + update)
    return ArrayRecord(weights)  # type: ignore[arg-type]
