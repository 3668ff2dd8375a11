"""Shared by the benchmark scripts: their size flags, number formatting for printed tables, and the CSV they
leave behind."""

from __future__ import annotations

import argparse
import csv
import math
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


def write_csv(
    rows: Sequence[dict[str, Any]], path: str | Path, fields: Sequence[str] | None = None, *, digits: int | None = None
) -> Path:
    """Write ``rows`` (missing fields left empty) to ``path``, creating its folder; returns the path.

    With ``digits`` every float is rounded to that many decimals (infinite values are kept as ``inf``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fields = list(fields or (rows[0] if rows else []))
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _rounded(row.get(k, ""), digits) for k in fields})
    return target


def _rounded(value: Any, digits: int | None) -> Any:
    if digits is None or not isinstance(value, float) or not math.isfinite(value):
        return value
    return round(value, digits)


def companion(path: str | Path, suffix: str) -> Path:
    """``results/x.csv`` → ``results/x_<suffix>.csv``: the paired-difference and per-batch files beside it."""
    target = Path(path)
    return target.with_name(f"{target.stem}_{suffix}{target.suffix or '.csv'}")


def print_cells(cells: Sequence[dict[str, Any]], labels: Sequence[str]) -> None:
    """One line per cell summary: its ``labels`` columns, then PSNR ± 95 %, the no-leak reference, the leakage
    ± 95 %, re-identification top-1, mean seconds per batch and the verdict."""
    heads = [f"{k:<{_width(cells, k)}}" for k in labels]
    print(" ".join(heads) + f" {'n':>2} {'PSNR ± 95 %':>14} {'ref':>6} {'leak ± 95 %':>14} {'reid':>5} {'s':>5}  verdict")
    for c in cells:
        line = " ".join(f"{str(c.get(k, '')):<{_width(cells, k)}}" for k in labels)
        if c.get("psnr_mean") is None:
            print(f"{line} {c.get('note', '')}")
            continue
        psnr = f"{c['psnr_mean']:.2f} ± {c['psnr_ci95']:.2f}"
        leak = f"{c['leakage_db']:+.2f} ± {c['leakage_ci95']:.2f}"
        print(f"{line} {c['n_batches']:>2} {psnr:>14} {c['reference_psnr']:6.2f} {leak:>14}"
              f" {fmt(c['reid_top1'], '5.2f')} {fmt(c['seconds_mean'], '5.0f')}  {c['verdict']}")


def print_pairs(pairs: Sequence[dict[str, Any]], labels: Sequence[str]) -> None:
    """One line per paired difference: ``labels``, ``a − b`` in dB ± 95 % and whether the interval excludes 0."""
    heads = [f"{k:<{_width(pairs, k)}}" for k in (*labels, "difference")]
    print(" ".join(heads) + f" {'n':>2} {'Δ ± 95 % (dB)':>15}  excludes 0")
    for p in pairs:
        line = " ".join(f"{str(p.get(k, '')):<{_width(pairs, k)}}" for k in (*labels, "difference"))
        delta = f"{p['diff_mean']:+.2f} ± {p['diff_ci95']:.2f}"
        print(f"{line} {p['n_batches']:>2} {delta:>15}  {'yes' if p['excludes_zero'] else 'no'}")


def _width(rows: Sequence[dict[str, Any]], key: str) -> int:
    return max([len(key), *(len(str(r.get(key, ""))) for r in rows)])
