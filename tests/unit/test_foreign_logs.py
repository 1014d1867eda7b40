"""Foreign click logs read right: real time resolution, numeric id order, named columns."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.loaders import builtin_path, load_dataset, load_ml100k
from common.data.log_format import LogFormat
from common.data.node_data import NodeDataConfig
from common.data.partitioning import load_split
from common.data.sequences import SequenceDataset, build_sequences, leave_one_out_split
from common.federation.config import FederatedConfig
from common.training.cli import build_parser, load_data, resolve_settings


def _original_sequences(dataset: SequenceDataset) -> dict[str, list[str]]:
    """Each user's items as original ids, keyed by original user id."""
    return {
        str(user): [str(dataset.item_ids[i - 1]) for i in sequence]
        for user, sequence in zip(dataset.user_ids, dataset.sequences, strict=True)
    }


@pytest.mark.parametrize(
    ("gap", "text"),
    [
        (timedelta(milliseconds=250), "%Y-%m-%dT%H:%M:%S.{ms}Z"),
        (timedelta(seconds=1), "%Y-%m-%dT%H:%M:%S+00:00"),
        (timedelta(minutes=1), "%Y-%m-%d %H:%M"),
    ],
)
def test_dates_order_events_at_their_resolution(tmp_path: Path, gap: timedelta, text: str) -> None:
    # Items in decreasing id order, one gap apart: only the times give the true order.
    start = datetime(2024, 3, 1, 10, tzinfo=UTC)
    rows = ["user,item,timestamp"]
    for step, item in enumerate([50, 40, 30, 20, 10]):
        moment = start + step * gap
        stamp = moment.strftime(text).format(ms=f"{moment.microsecond // 1000:03d}")
        rows.append(f"u1,{item},{stamp}")
    path = tmp_path / "log.csv"
    path.write_text("\n".join(rows[:1] + rows[:0:-1]) + "\n")  # written newest first

    dataset = build_sequences(load_dataset(path))

    assert _original_sequences(dataset) == {"u1": ["50", "40", "30", "20", "10"]}
    gaps = np.diff(load_dataset(path).frame["timestamp"].to_numpy())
    assert np.allclose(np.abs(gaps), gap.total_seconds())


def test_time_zones_are_honoured(tmp_path: Path) -> None:
    # 10:30+02:00 is 08:30 UTC, before 09:00Z.
    path = tmp_path / "log.csv"
    path.write_text(
        "user,item,timestamp\na,1,2024-01-01T09:00:00Z\na,2,2024-01-01T10:30:00+02:00\n"
    )
    assert _original_sequences(build_sequences(load_dataset(path))) == {"a": ["2", "1"]}


def test_equal_times_order_numeric_ids_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n1,10,5\n1,9,5\n1,sku-10,5\n1,sku-9,5\n1,100,4\n")
    assert _original_sequences(build_sequences(load_dataset(path))) == {
        "1": ["100", "9", "10", "sku-9", "sku-10"]
    }


@pytest.mark.parametrize(("unit", "scale"), [("s", 1.0), ("ms", 1e-3)])
def test_stated_time_unit(tmp_path: Path, unit: str, scale: float) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n1,2,1700000000\n")
    log = load_dataset(path, LogFormat.parse("", unit))
    assert log.frame["timestamp"].iloc[0] == pytest.approx(1.7e9 * scale)


def test_millisecond_timestamps_detected_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n1,2,1700000000500\n1,3,1700000000250\n")
    with caplog.at_level(logging.WARNING):
        log = load_dataset(path)
    assert "looks like milliseconds" in caplog.text
    assert list(log.frame["timestamp"]) == pytest.approx([1_700_000_000.5, 1_700_000_000.25])
    assert _original_sequences(build_sequences(log)) == {"1": ["3", "2"]}


def test_duplicate_interactions_keep_first_and_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp,price\n1,2,10,5\n1,3,11,6\n1,2,10,7\n1,2,12,8\n1,2,10,9\n")
    with caplog.at_level(logging.WARNING):
        log = load_dataset(path)
    assert log.duplicates_dropped == 2
    assert "2 duplicate interactions" in caplog.text and "line 4" in caplog.text
    assert list(log.frame["timestamp"]) == [10, 11, 12]


SHOP_COLUMNS = "user=customer_id,item=product_sku,timestamp=event_time"


def _shop_log(path: Path) -> Path:
    """ML-100k's u.data as a shop's event log: string ids, ISO times, shuffled, extra columns."""
    raw = pd.read_csv(builtin_path("ml-100k"), sep="\t", header=None, dtype=np.int64)
    raw.columns = ["user", "item", "rating", "timestamp"]
    rng = np.random.default_rng(7)
    zones = [timezone(timedelta(hours=h)) for h in (0, 2, -5)]
    times = [
        datetime.fromtimestamp(int(t), tz=zones[k]).isoformat()
        for t, k in zip(raw["timestamp"], rng.integers(0, 3, len(raw)), strict=True)
    ]
    shop = pd.DataFrame(
        {
            "channel": rng.choice(["web", "app"], len(raw)),
            "product_sku": "sku-" + raw["item"].astype(str),
            "event_time": times,
            "customer_id": "customer-" + raw["user"].astype(str),
            "price": raw["rating"] * 1.5,
        }
    )
    shop.iloc[rng.permutation(len(shop))].to_csv(path, index=False)
    return path


def test_shop_event_log_of_ml100k_loads_like_u_data(tmp_path: Path) -> None:
    path = _shop_log(tmp_path / "shop.csv")
    reference = build_sequences(load_ml100k())

    shop = build_sequences(load_dataset(path, LogFormat.parse(SHOP_COLUMNS)))

    assert (shop.n_users, shop.n_items, shop.n_interactions) == (943, 1682, 99_999)
    expected = {
        f"customer-{user}": [f"sku-{item}" for item in items]
        for user, items in _original_sequences(reference).items()
    }
    assert _original_sequences(shop) == expected
    split, reference_split = leave_one_out_split(shop), leave_one_out_split(reference)
    for stage in ("valid", "test"):
        got = {
            str(u): str(shop.item_ids[t - 1])
            for u, t in zip(shop.user_ids, split.targets(stage), strict=True)
        }
        want = {
            f"customer-{u}": f"sku-{reference.item_ids[t - 1]}"
            for u, t in zip(reference.user_ids, reference_split.targets(stage), strict=True)
        }
        assert got == want


def test_column_spec_through_train_cli_run_config_and_node_config(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    path.write_text("customer_id,product_sku,event_time\nc1,p2,2024-01-02\nc1,p1,2024-01-01\n")
    spec = "user=customer_id,item=product_sku,timestamp=event_time"

    cli = resolve_settings(build_parser().parse_args(["--dataset", str(path), "--columns", spec]))
    dataset, attributes = load_data(cli)
    config = FederatedConfig(dataset=str(path), dataset_columns=spec, dataset_time_unit="s")
    split = load_split(config.dataset, config.dataset_columns, config.dataset_time_unit)
    node = NodeDataConfig.from_node_config({"data-path": str(path), "data-columns": spec})

    assert _original_sequences(dataset) == {"c1": ["p1", "p2"]} and attributes is None
    assert [list(s) for s in split.train] == [[1, 2]]
    assert node.log_format == LogFormat("customer_id", "product_sku", "event_time")
    assert config.to_run_config()["dataset-columns"] == spec


def test_column_spec_parsing() -> None:
    assert LogFormat.parse("item=sku") == LogFormat(item="sku")
    assert LogFormat.parse(" user = u , timestamp= ", "ms") == LogFormat("u", "item", None, "ms")
    assert LogFormat.parse(LogFormat("a", "b", "c").spec()) == LogFormat("a", "b", "c")
