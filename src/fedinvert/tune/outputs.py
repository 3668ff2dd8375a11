"""What `fedinvert tune` writes beside its study: ``trials.csv``, ``best.yaml``, ``default.yaml`` and the summary.

Each reads the trials as plain `TrialRow` records (from the Optuna study), so the choice of the best trial is
a function of the objective alone: `select_best` never sees a PSNR.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from fedinvert.config.schema import DEFAULTS, GROUPS

#: Metrics of a trial's run kept beside it (reported, never used to choose): user attributes of the trial.
REPORTED = ("psnr", "leakage_db", "reference_psnr", "ssim", "label_accuracy", "seconds", "compile_seconds",
            "iterations", "stage")
#: Keys a preset never holds: where a run writes, and which private batch it attacks (``seed``).
NOT_IN_PRESET = ("out", "overwrite", "progress", "seed")


@dataclass(frozen=True)
class TrialRow:
    """One trial as trials.csv shows it.

    ``status``: ``complete``, ``failed`` (its run raised; ``error`` says why), ``interrupted`` (stopped by
    Ctrl-C or a killed tune; its parameters are run again as trial ``retry_of`` of a later row), ``running``.
    """

    number: int
    status: str
    params: dict[str, Any]
    objective: float | None
    default: bool = False
    retry_of: int | None = None
    wall_seconds: float | None = None
    reported: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    folder: str = ""


def select_best(rows: Iterable[TrialRow]) -> TrialRow | None:
    """The complete trial with the least objective (the lower number on a tie); None without one.

    Only ``objective`` is read: the attacker has no ground truth, so a reported PSNR may never pick a trial.
    """
    complete = [r for r in rows if r.status == "complete" and r.objective is not None and math.isfinite(r.objective)]
    return min(complete, key=lambda r: (r.objective, r.number)) if complete else None


def default_row(rows: Iterable[TrialRow]) -> TrialRow | None:
    """The complete trial that ran the configuration as given (trial 0, or its retry)."""
    return next((r for r in rows if r.default and r.status == "complete"), None)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value)
    return value


def trials_csv(rows: Sequence[TrialRow], keys: Sequence[str]) -> str:
    """trials.csv: ``number, status, default, objective``, the reported metrics, one column per searched key,
    ``wall_seconds, retry_of, error, folder``."""
    buffer = io.StringIO()
    columns = ["number", "status", "default", "objective", *REPORTED, *keys, "wall_seconds", "retry_of", "error",
               "folder"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        line: dict[str, Any] = {"number": row.number, "status": row.status, "default": "yes" if row.default else "",
                                "objective": _cell(row.objective)}
        line.update({k: _cell(row.reported.get(k)) for k in REPORTED})
        line.update({k: _cell(row.params.get(k)) for k in keys})
        line.update({"wall_seconds": _cell(row.wall_seconds), "retry_of": _cell(row.retry_of),
                     "error": row.error or "", "folder": row.folder})
        writer.writerow(line)
    return buffer.getvalue()


def _minimal(value: Any, default: Any) -> Any:
    """``value`` without the entries equal to ``default`` (recursively; a group keeps its ``name``)."""
    if not isinstance(value, dict) or not isinstance(default, dict):
        return value
    out = {}
    for key in sorted(value, key=lambda k: k != "name"):
        item = value[key]
        if key == "name" or key not in default:
            out[key] = item
        elif item != default[key]:
            out[key] = _minimal(item, default[key])
    return out


def preset_mapping(cfg: dict[str, Any]) -> dict[str, Any]:
    """A resolved configuration as a preset, in the defaults' key order: every group's name, the batch size
    and image size, and whatever else differs from the defaults; never `NOT_IN_PRESET`."""
    order = [k for k in DEFAULTS if k in cfg] + [k for k in cfg if k not in DEFAULTS]
    out: dict[str, Any] = {}
    for key in order:
        value = cfg[key]
        if key in NOT_IN_PRESET:
            continue
        if key in GROUPS and isinstance(value, dict):
            out[key] = _minimal(value, DEFAULTS[key] if isinstance(DEFAULTS.get(key), dict) else {})
        elif key in ("batch_size", "image_size") or value != DEFAULTS.get(key):
            out[key] = _minimal(value, DEFAULTS.get(key))
    return out


def preset_text(cfg: dict[str, Any], header: Sequence[str]) -> str:
    """A preset file: ``header`` as YAML comments, then `preset_mapping` of ``cfg``."""
    lines = [f"# {line}" if line else "#" for line in header]
    return "\n".join(lines) + "\n" + yaml.safe_dump(preset_mapping(cfg), sort_keys=False)


def params_text(params: dict[str, Any]) -> str:
    """``attack.lr=0.0316 attack.schedule=step`` (numbers to 3 significant digits)."""
    def show(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return v if isinstance(v, str) else json.dumps(v)

    return " ".join(f"{k}={show(v)}" for k, v in params.items())


def rank_correlation(rows: Sequence[TrialRow]) -> tuple[float, int] | None:
    """Spearman's ρ between objective and PSNR over the complete trials that have both (reported only)."""
    from scipy.stats import spearmanr

    pairs = [(r.objective, r.reported.get("psnr")) for r in rows if r.status == "complete"]
    pairs = [(o, p) for o, p in pairs if o is not None and p is not None]
    if len(pairs) < 3 or len({o for o, _ in pairs}) < 2 or len({p for _, p in pairs}) < 2:
        return None
    rho = float(spearmanr([o for o, _ in pairs], [p for _, p in pairs]).statistic)
    return (rho, len(pairs)) if math.isfinite(rho) else None


def trial_line(label: str, row: TrialRow) -> str:
    """``best (trial 7): distance 1.2e-05  PSNR 21.0 dB  leakage +4.9 dB  12.3 s  attack.lr=…``."""
    psnr, leak, secs = (row.reported.get(k) for k in ("psnr", "leakage_db", "seconds"))
    parts = [f"{label} (trial {row.number}): distance {row.objective:.4g}"]
    parts.append("PSNR n/a" if psnr is None else f"PSNR {psnr:.2f} dB")
    if leak is not None:
        parts.append(f"leakage {leak:+.2f} dB")
    if secs is not None:
        parts.append(f"{secs:.1f} s")
    return "  ".join(parts) + "  " + params_text(row.params)
