"""Shared by the benchmark scripts: number formatting for printed tables and the CSV they leave behind."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``n/a`` for a missing number."""
    return "n/a" if value is None else format(value, spec)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, fields: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (missing fields left empty) to ``path``, creating its folder; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fields = list(fields or (rows[0] if rows else []))
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})
    return target
