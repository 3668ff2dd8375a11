"""Shared by the benchmark scripts: their size flags, number formatting for printed tables, and the CSV they
leave behind."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def sized_parser(description: str, *, csv: str, full_help: str, smoke_help: str) -> argparse.ArgumentParser:
    """A parser with the flags every benchmark has: ``--full`` | ``--smoke``, ``--threads`` (1), ``--csv``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help=full_help)
    size.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", default=csv)
    return parser


def parse_sized(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, str]:
    """Parse, set torch's thread count, and name the size: ``full``, ``smoke`` or ``default``."""
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args, "full" if args.full else "smoke" if args.smoke else "default"


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
