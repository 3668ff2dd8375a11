"""The study folder's result store: one SQLite row per finished run, ``results.csv`` kept current beside it.

A study folder holds ``study.yaml`` (the study as given), ``sweep.json`` (its axes, replicates, comparisons and
size, for ``fedinvert report``), ``runs/<id>/`` (each run's ordinary run folder, renamed into place when
complete), ``results.sqlite`` and ``results.csv``. A row is written in one SQLite transaction after its run
folder is in place, and ``results.csv`` is rewritten through a temporary file: a sweep killed at any moment
keeps every finished run, and a folder whose row was never written (killed between the two) is adopted from
its ``metrics.json`` when the sweep starts again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedinvert.errors import ConfigError

#: Metric columns of results.csv, after id, status, error and the axes (DESIGN §12's metrics.json keys).
METRIC_COLUMNS = (
    "psnr", "ssim", "mse", "label_accuracy", "leakage_db", "reference_psnr", "reid_top1", "seconds", "iterations",
)
EXTRA_COLUMNS = ("st_lpips", "feature_distance", "gradient_cosine", "mapping_accuracy", "exact_share", "compile_seconds",
                 "stage")
EXACT_PSNR_DB = 60.0
"""A reconstructed image at this PSNR or above counts as recovered exactly (``exact_share``; float32 rounding
of an exact analytic recovery lands well above it, any optimisation-based result well below)."""
MARKER = "sweep.json"
_SCHEMA = """
create table if not exists runs (
    id text primary key,
    status text not null,
    error text,
    values_json text not null,
    metrics_json text,
    finished real not null,
    worker text
)
"""


def metric_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """The flat metrics of results.csv from a run's metrics.json."""
    reference = metrics.get("reference") or {}
    row = {key: metrics.get(key) for key in METRIC_COLUMNS if key != "reference_psnr"}
    row["reference_psnr"] = reference.get("psnr") if isinstance(reference, dict) else None
    row["st_lpips"] = metrics.get("st_lpips")
    row["feature_distance"] = metrics.get("feature_distance")
    row["gradient_cosine"] = metrics.get("gradient_cosine")
    row["mapping_accuracy"] = metrics.get("mapping_accuracy")
    row["exact_share"] = exact_share(metrics.get("per_image"))
    row["compile_seconds"] = metrics.get("compile_seconds")
    stages = metrics.get("stages") or []
    row["stage"] = next((s.get("stage") for s in stages if isinstance(s, dict) and s.get("chosen")), None)
    return row


def exact_share(per_image: Any) -> float | None:
    """The share of a batch's images recovered at `EXACT_PSNR_DB` or above, after matching (None without
    per-image scores)."""
    if not isinstance(per_image, list) or not per_image:
        return None
    scores = [p.get("psnr") for p in per_image if isinstance(p, dict)]
    numbers = [float(x) for x in scores if isinstance(x, int | float)]
    if not numbers or len(numbers) != len(per_image):
        return None
    return sum(x >= EXACT_PSNR_DB for x in numbers) / len(numbers)


def cell_text(value: Any) -> str:
    """An axis value as results.csv writes it: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class StoredRun:
    """A row of the store."""

    id: str
    status: str
    error: str | None
    values: dict[str, Any]
    metrics: dict[str, Any] | None


class ResultStore:
    """The SQLite table of a study folder (`sqlite3`, one writer: the sweep's driver process)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "results.sqlite"
        try:
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute("pragma synchronous=full")
            with self._db:
                self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ConfigError(f"{self.path}: not a readable result store ({err}); move it away or choose another out=")\
                from None

    def close(self) -> None:
        self._db.close()

    def rows(self) -> dict[str, StoredRun]:
        """Every stored run by id."""
        try:
            found = self._db.execute("select id, status, error, values_json, metrics_json from runs").fetchall()
        except sqlite3.DatabaseError as err:
            raise ConfigError(f"{self.path}: cannot read the result store ({err})") from None
        return {
            r[0]: StoredRun(r[0], r[1], r[2], json.loads(r[3]), None if r[4] is None else json.loads(r[4]))
            for r in found
        }

    def put(self, run_id: str, *, status: str, values: dict[str, Any], metrics: dict[str, Any] | None,
            error: str | None = None, worker: str | None = None) -> None:
        """Record a finished run (``ok`` or ``failed``) in one transaction, replacing an earlier failure."""
        with self._db:
            self._db.execute(
                "insert or replace into runs values (?, ?, ?, ?, ?, ?, ?)",
                (run_id, status, error, json.dumps(values, default=str),
                 None if metrics is None else json.dumps(metrics, default=str), time.time(), worker),
            )

    def write_csv(self, axes: list[str], order: Iterable[tuple[str, dict[str, Any]]]) -> Path:
        """Rewrite ``results.csv`` (atomically) for the planned runs ``order`` (id, axis values) that are stored."""
        stored = self.rows()
        lines = [
            ResultLine(run_id, row.status, row.error, values, row.metrics, f"runs/{run_id}" if row.status == "ok" else "")
            for run_id, values in order
            if (row := stored.get(run_id)) is not None
        ]
        target = self.folder / "results.csv"
        atomic_write(target, results_csv(axes, lines))
        return target


@dataclass(frozen=True)
class ResultLine:
    """A row of results.csv: a run's id, status, error, axis values, metrics.json and folder (relative)."""

    id: str
    status: str
    error: str | None
    values: dict[str, Any]
    metrics: dict[str, Any] | None
    folder: str


def results_csv(axes: list[str], lines: Iterable[ResultLine]) -> str:
    """The text of results.csv: ``id, status, error``, the axes, the metric columns, ``folder``."""
    buffer = io.StringIO()
    columns = ["id", "status", "error", *axes, *METRIC_COLUMNS, *EXTRA_COLUMNS, "folder"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for item in lines:
        line: dict[str, Any] = {"id": item.id, "status": item.status, "error": item.error or ""}
        line.update({axis: cell_text(item.values.get(axis)) for axis in axes})
        line.update({k: "" if v is None else v for k, v in metric_row(item.metrics or {}).items()})
        line["folder"] = item.folder
        writer.writerow(line)
    return buffer.getvalue()


def index_runs(folder: Path, *, name: str, axes: list[str], lines: list[ResultLine], description: str | None = None,
               command: str = "") -> None:
    """Make ``folder``, which holds finished run folders, readable by ``fedinvert report``: its sweep.json and
    results.csv (for runs made outside a sweep, such as the demo's)."""
    info = {"name": name, "description": description, "axes": axes, "replicates": [], "compare": [],
            "total": len(lines), "full": False, "command": command, "study": None}
    atomic_write(folder / MARKER, json.dumps(info, indent=2) + "\n")
    atomic_write(folder / "results.csv", results_csv(axes, lines))


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_study_folder(folder: Path, shown: str) -> None:
    """Refuse an ``out`` that is a file, a link, or a non-empty folder that is not a study folder."""
    if folder.is_symlink():
        raise ConfigError(f"out={shown} is a symbolic link; give the folder it points to")
    if not folder.exists():
        parent = folder.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"out={shown}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"out={shown}: cannot create it ({parent} is not writable)")
        return
    if not folder.is_dir():
        raise ConfigError(f"out={shown} is a file, not a folder; choose another out=")
    try:
        entries = [p.name for p in folder.iterdir()]
    except OSError as err:
        raise ConfigError(f"out={shown}: cannot read the folder ({err.strerror or err})") from None
    if entries and MARKER not in entries:
        raise ConfigError(
            f"out={shown} exists, is not empty and is not a study folder (no {MARKER}); choose another out="
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"out={shown}: the folder is not writable")


def adopt_orphans(store: ResultStore, runs_dir: Path, planned: dict[str, dict[str, Any]]) -> int:
    """Rows for complete run folders of planned runs that have none (a sweep killed after the rename)."""
    stored = store.rows()
    adopted = 0
    for run_id, values in planned.items():
        ok = stored.get(run_id)
        if ok is not None and ok.status == "ok":
            continue
        metrics_file = runs_dir / run_id / "metrics.json"
        if not metrics_file.is_file():
            continue
        try:
            metrics = json.loads(metrics_file.read_text())
            run_info = json.loads((runs_dir / run_id / "run.json").read_text())
        except (OSError, ValueError):
            continue
        if run_info.get("interrupted"):
            continue
        store.put(run_id, status="ok", values=values, metrics=metrics, worker="adopted")
        adopted += 1
    return adopted
