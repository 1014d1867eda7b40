"""How to read a foreign click log: its column names and the unit of numeric timestamps.

A column spec names the file's columns for the roles ``user``, ``item`` and ``timestamp``,
for example ``user=customer_id,item=product_sku,timestamp=event_time``. Roles left out keep
their default column name (``user``, ``item``, ``timestamp``); ``timestamp=`` (empty) means
the log has no time column and file order is time order. The same spec is accepted by the
train CLI (``--columns``), the run config (``dataset-columns``) and an edge node's node
config (``data-columns``).

The timestamp unit applies to numeric timestamps only (dates carry their own resolution):
``s``, ``ms``, ``us``, ``ns`` or ``auto`` (detected from the magnitude, with a warning when it
is not seconds). Run config ``dataset-time-unit``, node config ``data-time-unit``, train CLI
``--time-unit``.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("user", "item", "timestamp")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
AUTO_UNIT = "auto"
MAX_COLUMN_NAME = 200


@dataclass(frozen=True)
class LogFormat:
    """Column names of a CSV / Parquet click log and the unit of its numeric timestamps."""

    user: str = "user"
    item: str = "item"
    timestamp: str | None = "timestamp"
    time_unit: str = AUTO_UNIT

    def __post_init__(self) -> None:
        if self.time_unit not in (AUTO_UNIT, *TIME_UNITS):
            raise ValueError(
                f"time unit must be one of {AUTO_UNIT}, {', '.join(TIME_UNITS)}, "
                f"got {self.time_unit!r}"
            )
        named = [name for name in (self.user, self.item, self.timestamp) if name]
        if len(set(named)) != len(named):
            raise ValueError(f"column spec uses one column for two roles: {self.spec()!r}")

    @property
    def is_default(self) -> bool:
        """Whether this is the plain ``user,item,timestamp`` layout with detected units."""
        return self == LogFormat()

    def spec(self) -> str:
        """The column spec that parses back to these columns."""
        return f"user={self.user},item={self.item},timestamp={self.timestamp or ''}"

    @classmethod
    def parse(cls, columns: str = "", time_unit: str = "") -> LogFormat:
        """Parse a column spec (``""`` = default names) and a time unit (``""`` = auto)."""
        names: dict[str, str | None] = {}
        for part in (p.strip() for p in columns.split(",")) if columns.strip() else ():
            role, equals, column = (text.strip() for text in part.partition("="))
            if not equals:
                raise ValueError(
                    f"column spec {columns!r}: {part!r} is not role=column "
                    "(e.g. user=customer_id,item=product_sku,timestamp=event_time)"
                )
            if role not in ROLES:
                raise ValueError(
                    f"column spec {columns!r}: unknown role {role!r} (roles: {', '.join(ROLES)})"
                )
            if role in names:
                raise ValueError(f"column spec {columns!r}: role {role!r} given twice")
            if not column and role != "timestamp":
                raise ValueError(f"column spec {columns!r}: role {role!r} needs a column name")
            if len(column) > MAX_COLUMN_NAME:
                raise ValueError(f"column spec: column name for {role!r} is over 200 characters")
            names[role] = column or None
        return cls(
            user=names.get("user") or "user",
            item=names.get("item") or "item",
            timestamp=names.get("timestamp", "timestamp"),
            time_unit=time_unit.strip() or AUTO_UNIT,
        )
