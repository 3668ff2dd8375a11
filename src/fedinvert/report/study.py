"""The report of a study folder written by ``fedinvert sweep``: cells, paired comparisons, text and HTML.

A study folder holds ``sweep.json`` (name, description, axes, replicates, compare, total, command),
``results.csv`` (one row per stored run: ``id, status, error``, one column per axis, the metric columns of
`fedinvert.sweep.store`, ``folder``) and ``runs/<id>/`` (ordinary run folders). The report groups the finished
runs into *cells* — one per combination of the axes that are not replicates — and gives each its mean with a
95 % Student-t interval over the replicates (the private batches), always beside the no-leak reference
(DESIGN §8): a cell whose leakage interval does not lie wholly above 0 dB says ``no leak measured``, which is not
a ranking. A ``compare`` entry of the study is a paired comparison: each other value of its axis against the
baseline value on the very same runs otherwise (every other axis equal, replicates included).

    study = load_study("runs/theorem1")
    print(text_report("runs/theorem1"))            # aligned tables for terminals and benchmark logs
    write_report("runs/theorem1")                  # runs/theorem1/report.html, one self-contained file
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fedinvert.errors import ConfigError
from fedinvert.sweep.store import MARKER, METRIC_COLUMNS, cell_text

CONFIDENCE = 0.95
NO_LEAK = "no leak measured"
NOT_RESOLVED = "not resolved"
#: DESIGN §8: a claim that one setting leaks more than another rests on at least this many paired batches
MIN_PAIRS_FOR_CLAIM = 8
#: the columns results.csv must hold besides the axes
BASE_COLUMNS = ("id", "status", "error")
STATUSES = ("ok", "failed")
#: metric columns shown when results.csv has them and some run reports them (Proposition 1's gradient cosine)
OPTIONAL_COLUMNS = ("gradient_cosine", "mapping_accuracy", "exact_share")


# -- the folder --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRow:
    """One row of ``results.csv``.

    ``values`` maps each axis key to its cell text (a string value as written, anything else as JSON);
    ``metrics`` maps each of `METRIC_COLUMNS` to a float, or None where the cell is empty; ``folder`` is the
    run folder (inside the study folder) of a finished run, None for a failed one or a folder outside the study.
    """

    id: str
    status: str
    error: str
    values: dict[str, str]
    metrics: dict[str, float | None]
    folder: Path | None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def run_metrics(self) -> dict[str, Any] | None:
        """The run folder's whole ``metrics.json`` (stages, per-image numbers, …); None without a folder or
        where the file is missing or not a JSON object."""
        if self.folder is None:
            return None
        try:
            data = json.loads((self.folder / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class StudyResults:
    """A study folder as read by `load_study`: its ``sweep.json`` and the rows of its ``results.csv``."""

    folder: Path
    name: str
    description: str | None
    axes: list[str]
    replicates: list[str]
    compare: list[dict[str, Any]]
    total: int
    command: str
    rows: list[RunRow]
    columns: list[str] = field(default_factory=list)
    zips: list[list[str]] = field(default_factory=list)

    def partners(self, axis: str) -> list[str]:
        """``axis`` and the axes zipped with it (they vary together, so a comparison along one holds them all)."""
        return next((group for group in self.zips if axis in group), [axis])

    @property
    def settings(self) -> list[str]:
        """The axes that are not replicates: the ones that tell cells apart, in the study's order."""
        return [a for a in self.axes if a not in self.replicates]

    @property
    def failed(self) -> list[RunRow]:
        return [r for r in self.rows if not r.ok]


def _folder(directory: str | Path) -> Path:
    folder = Path(directory)
    if not folder.exists():
        raise ConfigError(f"report: study folder {directory} does not exist")
    if not folder.is_dir():
        raise ConfigError(f"report: {directory} is a file, not a study folder")
    if not (folder / MARKER).is_file():
        raise ConfigError(f"report: {directory} is not a study folder (it has no {MARKER}; `fedinvert sweep` writes one)")
    return folder


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"report: {path} is not UTF-8 text") from None
    except OSError as err:
        raise ConfigError(f"report: cannot read {path} ({err.strerror or err})") from None


def _sweep_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise ConfigError(f"report: {path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(info, dict):
        raise ConfigError(f"report: {path} must hold a JSON object, got {type(info).__name__}")
    axes = info.get("axes")
    if not isinstance(axes, list) or not all(isinstance(a, str) and a for a in axes):
        raise ConfigError(f"report: {path}: 'axes' must be a list of dotted keys, got {axes!r}")
    replicates = info.get("replicates", ["seed"] if "seed" in axes else [])
    if not isinstance(replicates, list) or any(r not in axes for r in replicates):
        raise ConfigError(f"report: {path}: 'replicates' must list axes of the study ({', '.join(axes)}), got {replicates!r}")
    compare = info.get("compare") or []
    if not isinstance(compare, list):
        raise ConfigError(f"report: {path}: 'compare' must be a list of {{axis, baseline}}, got {compare!r}")
    for i, entry in enumerate(compare):
        if not isinstance(entry, dict) or "axis" not in entry or "baseline" not in entry:
            raise ConfigError(f"report: {path}: compare[{i}] must be {{\"axis\": KEY, \"baseline\": VALUE}}, got {entry!r}")
        if entry["axis"] not in axes:
            raise ConfigError(f"report: {path}: compare[{i}].axis {entry['axis']!r} is not an axis ({', '.join(axes)})")
    zips = info.get("zip") or []
    if not isinstance(zips, list) or any(not isinstance(g, list) or any(a not in axes for a in g) for g in zips):
        raise ConfigError(f"report: {path}: 'zip' must be a list of lists of axes ({', '.join(axes)}), got {zips!r}")
    for key, kind in (("name", str), ("command", str), ("total", int)):
        if key in info and info[key] is not None and (not isinstance(info[key], kind) or isinstance(info[key], bool)):
            raise ConfigError(f"report: {path}: '{key}' must be a {kind.__name__}, got {info[key]!r}")
    description = info.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"report: {path}: 'description' must be a string or null, got {description!r}")
    return info


def _number(text: str, *, where: str, column: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"report: {where}: column {column} holds {text!r}, not a finite number")
    return value


def _run_folder(study: Path, text: str, run_id: str) -> Path | None:
    """The run folder a row names (``runs/<id>`` when empty), kept only when it lies inside the study folder."""
    path = (study / (text or f"runs/{run_id}")).resolve()
    root = study.resolve()
    return path if path.is_relative_to(root) and path != root else None


def _rows(path: Path, axes: list[str], study: Path) -> tuple[list[str], list[RunRow]]:
    text = _read_text(path)
    try:
        lines = list(csv.reader(text.splitlines()))
    except csv.Error as err:
        raise ConfigError(f"report: {path} is not a readable CSV file ({err})") from None
    if not lines:
        raise ConfigError(f"report: {path} is empty (not even a header)")
    header = lines[0]
    need = [*BASE_COLUMNS, *axes, *METRIC_COLUMNS, "folder"]
    missing = [c for c in need if c not in header]
    if missing:
        raise ConfigError(f"report: {path} has no column {missing[0]} (columns: {', '.join(header) or 'none'})")
    rows = []
    for number, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue
        where = f"{path.name} line {number}"
        if len(fields) != len(header):
            raise ConfigError(f"report: {where} has {len(fields)} fields, the header has {len(header)}")
        cell = dict(zip(header, fields, strict=True))
        status = cell["status"]
        if status not in STATUSES:
            raise ConfigError(f"report: {where}: status must be ok or failed, got {status!r}")
        if not cell["id"]:
            raise ConfigError(f"report: {where}: the id is empty")
        metrics = {c: _number(cell[c], where=where, column=c) for c in (*METRIC_COLUMNS, *OPTIONAL_COLUMNS)
                   if c in cell}
        folder = _run_folder(study, cell["folder"], cell["id"]) if status == "ok" else None
        rows.append(RunRow(cell["id"], status, cell["error"], {a: cell[a] for a in axes}, metrics, folder))
    return header, rows


def load_study(directory: str | Path) -> StudyResults:
    """Read a study folder's ``sweep.json`` and ``results.csv`` (see the module docstring).

    Raises:
        ConfigError: the folder, ``sweep.json`` or ``results.csv`` is missing, unreadable or malformed (a
            missing column, a row with the wrong number of fields, a status other than ok/failed, a metric
            cell that is not a number); the message is one line naming the file.
    """
    folder = _folder(directory)
    info = _sweep_info(folder / MARKER)
    axes = list(info["axes"])
    results = folder / "results.csv"
    if not results.is_file():
        raise ConfigError(f"report: {directory} has no results.csv (the sweep has stored no run yet)")
    columns, rows = _rows(results, axes, folder)
    return StudyResults(
        folder=folder,
        name=info.get("name") or folder.name,
        description=info.get("description"),
        axes=axes,
        replicates=list(info.get("replicates", ["seed"] if "seed" in axes else [])),
        compare=list(info.get("compare") or []),
        total=int(info.get("total") or len(rows)),
        command=info.get("command") or "",
        rows=rows,
        columns=columns,
        zips=[list(group) for group in info.get("zip") or []],
    )


# -- statistics --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A mean with the half-width of its two-sided Student-t confidence interval over ``n`` values.

    ``half`` is ``inf`` for a single value (no spread can be estimated) and 0 for identical values.
    """

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies strictly above or strictly below 0."""
        return self.low > 0 or self.high < 0


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and half-width ``t(1 − α/2, n − 1) · s / √n`` of ``values`` (s: sample std with ddof 1).

    Raises:
        ValueError: no values, a NaN among them, or a confidence outside (0, 1).
    """
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        raise ValueError("t_interval needs at least one value")
    if np.isnan(data).any():
        raise ValueError("t_interval got NaN")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    mean = float(data.mean())
    if data.size == 1:
        return Interval(mean, math.inf, 1)
    sem = float(data.std(ddof=1)) / math.sqrt(data.size)
    return Interval(mean, float(stats.t.ppf(0.5 + confidence / 2, data.size - 1)) * sem, int(data.size))


def _values(rows: Sequence[RunRow], key: str) -> list[float]:
    return [v for r in rows if (v := r.metrics.get(key)) is not None]


def _interval(rows: Sequence[RunRow], key: str) -> Interval | None:
    values = _values(rows, key)
    return t_interval(values) if values else None


def _mean(rows: Sequence[RunRow], key: str) -> float | None:
    values = _values(rows, key)
    return float(np.mean(values)) if values else None


def leak_verdict(leakage: Interval | None) -> str:
    """``leaks +m ± h dB`` when the leakage interval lies wholly above 0 dB, else ``no leak measured``.

    Below or around the no-leak reference the attack shows nothing an attacker without the update could not
    get (DESIGN §8); such cells are not ranked against each other.
    """
    if leakage is None:
        return "no reference"
    if leakage.low > 0:
        return f"leaks {leakage.mean:+.2f} ± {leakage.half:.2f} dB"
    return NO_LEAK


# -- cells ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """The runs of a study with equal values of every non-replicate axis, pooled over the replicates.

    ``psnr`` and ``leakage_db`` are mean ± 95 % t-intervals (dB) over the finished runs; the other numbers are
    means over the runs that report them (None when none does); ``failed`` are the cell's failed runs.
    """

    values: dict[str, str]
    runs: list[RunRow]
    failed: list[RunRow]
    psnr: Interval | None
    leakage_db: Interval | None
    reference_psnr: float | None
    ssim: float | None
    label_accuracy: float | None
    reid_top1: float | None
    seconds: float | None
    verdict: str
    gradient_cosine: float | None = None
    mapping_accuracy: float | None = None
    exact_share: float | None = None

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def label(self) -> str:
        """``attack.name=gifd batch_size=4`` (``all runs`` for a study without non-replicate axes)."""
        return describe_values(self.values) or "all runs"


def describe_values(values: dict[str, str]) -> str:
    """``key=value key=value`` of axis cell texts."""
    return " ".join(f"{k}={v}" for k, v in values.items())


def cells(study: StudyResults) -> list[Cell]:
    """The study's cells in the order of their first row in results.csv (see `Cell`).

    A cell whose every run failed is kept, with ``n`` 0 and the verdict ``no finished run``.
    """
    groups: dict[tuple[str, ...], list[RunRow]] = {}
    settings = study.settings
    for row in study.rows:
        groups.setdefault(tuple(row.values[a] for a in settings), []).append(row)
    out = []
    for key, rows in groups.items():
        ok = [r for r in rows if r.ok]
        leakage = _interval(ok, "leakage_db")
        out.append(Cell(
            values=dict(zip(settings, key, strict=True)),
            runs=ok,
            failed=[r for r in rows if not r.ok],
            psnr=_interval(ok, "psnr"),
            leakage_db=leakage,
            reference_psnr=_mean(ok, "reference_psnr"),
            ssim=_mean(ok, "ssim"),
            label_accuracy=_mean(ok, "label_accuracy"),
            reid_top1=_mean(ok, "reid_top1"),
            seconds=_mean(ok, "seconds"),
            verdict=leak_verdict(leakage) if ok else "no finished run",
            gradient_cosine=_mean(ok, "gradient_cosine"),
            mapping_accuracy=_mean(ok, "mapping_accuracy"),
            exact_share=_mean(ok, "exact_share"),
        ))
    return out


# -- paired comparisons --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedRow:
    """``value − baseline`` of the leakage (dB) over runs equal in every other axis, replicates included.

    ``setting`` holds the other non-replicate axes of the pairs (empty for a row that pools every setting,
    or when there is no other axis); ``diff`` is None without pairs.
    """

    value: str
    setting: dict[str, str]
    pooled: bool
    diff: Interval | None
    psnr_diff: float | None
    either_leaks: bool = True

    @property
    def n(self) -> int:
        return 0 if self.diff is None else self.diff.n

    @property
    def verdict(self) -> str:
        """``+m ± h dB`` when the interval excludes 0, ``not resolved`` when it holds 0, ``no pairs``."""
        if self.diff is None:
            return "no pairs"
        if self.diff.excludes_zero:
            measured = f"{self.diff.mean:+.2f} ± {self.diff.half:.2f} dB"
            # DESIGN §8: below the reference is no leak measured, not a ranking
            return measured if self.either_leaks else f"{measured}, neither side leaks"
        return NOT_RESOLVED


@dataclass(frozen=True)
class Comparison:
    """A study's ``compare`` entry: every other value of ``axis`` against ``baseline`` (both as cell text)."""

    axis: str
    baseline: str
    others: list[str]
    rows: list[PairedRow]


def _pairs(study: StudyResults, axis: str, baseline: str, value: str) -> list[tuple[RunRow, RunRow]]:
    """Each run at ``value`` with the baseline run that agrees with it in every axis outside ``axis``'s zip group.

    When each of the two values comes with one setting of the zip partners (``attack.name`` zipped with its
    budget), the partners differ by design and are not compared. When a value comes with several (a zip group
    listing cells, e.g. batch size × auxiliary data), a run pairs only with the baseline run whose partners
    equal its own, and stays unpaired where the study has none, rather than meeting another cell by chance.
    """
    partners = [a for a in study.partners(axis) if a != axis]
    rest = [a for a in study.axes if a not in study.partners(axis)]

    def usable(row: RunRow, at: str) -> bool:
        return row.ok and row.values[axis] == at and row.metrics.get("leakage_db") is not None

    def combos(at: str) -> set[tuple[str, ...]]:
        return {tuple(r.values[a] for a in partners) for r in study.rows if usable(r, at)}

    held = rest if len(combos(baseline)) <= 1 and len(combos(value)) <= 1 else rest + partners

    def key(row: RunRow) -> tuple[str, ...]:
        return tuple(row.values[a] for a in held)

    base: dict[tuple[str, ...], RunRow] = {}
    for row in study.rows:
        if usable(row, baseline):
            base.setdefault(key(row), row)
    pairs = []
    for row in study.rows:
        if usable(row, value) and (partner := base.get(key(row))) is not None:
            pairs.append((row, partner))
    return pairs


def _difference(a: RunRow, b: RunRow, key: str) -> float | None:
    x, y = a.metrics.get(key), b.metrics.get(key)
    return None if x is None or y is None else x - y


def _paired_row(value: str, setting: dict[str, str], pairs: list[tuple[RunRow, RunRow]], *, pooled: bool) -> PairedRow:
    if not pairs:
        return PairedRow(value, setting, pooled, None, None)
    diffs = [d for a, b in pairs if (d := _difference(a, b, "leakage_db")) is not None]
    psnr = [d for a, b in pairs if (d := _difference(a, b, "psnr")) is not None]
    sides = [_interval([pair[i] for pair in pairs], "leakage_db") for i in (0, 1)]
    either = any(side is not None and side.low > 0 for side in sides)
    return PairedRow(value, setting, pooled, t_interval(diffs), float(np.mean(psnr)) if psnr else None, either)


def comparisons(study: StudyResults) -> list[Comparison]:
    """The paired comparisons the study asks for (``compare`` in sweep.json), in its order.

    For each value of the axis other than the baseline: one row per setting of the other non-replicate axes
    (pairs that agree in every other axis, replicates included), then — when the pairs span several settings —
    one row pooling them all.
    """
    out = []
    for entry in study.compare:
        axis = entry["axis"]
        baseline = cell_text(entry["baseline"])
        others = list(dict.fromkeys(r.values[axis] for r in study.rows if r.values[axis] != baseline))
        setting_axes = [a for a in study.settings if a not in study.partners(axis)]
        rows: list[PairedRow] = []
        for value in others:
            pairs = _pairs(study, axis, baseline, value)
            by_setting: dict[tuple[str, ...], list[tuple[RunRow, RunRow]]] = {}
            for pair in pairs:
                by_setting.setdefault(tuple(pair[0].values[a] for a in setting_axes), []).append(pair)
            if not by_setting:
                rows.append(_paired_row(value, {}, [], pooled=False))
            for key, group in by_setting.items():
                rows.append(_paired_row(value, dict(zip(setting_axes, key, strict=True)), group, pooled=False))
            if len(by_setting) > 1:
                rows.append(_paired_row(value, {}, pairs, pooled=True))
        out.append(Comparison(axis, baseline, others, rows))
    return out


# -- formatting --------------------------------------------------------------------------------------------
def fmt(value: float | None, spec: str = ".2f") -> str:
    """A number with ``spec``; ``n/a`` for None."""
    return "n/a" if value is None else format(value, spec)


def fmt_interval(interval: Interval | None, spec: str = ".2f", *, signed: bool = False) -> str:
    """``mean ± half`` (``± inf`` for one value; ``n/a`` for None); ``signed`` writes the mean's sign."""
    if interval is None:
        return "n/a"
    mean = format(interval.mean, f"+{spec}" if signed else spec)
    half = "inf" if math.isinf(interval.half) else format(interval.half, spec)
    return f"{mean} ± {half}"


def cell_table(study: StudyResults, found: Sequence[Cell] | None = None) -> tuple[list[str], list[list[str]]]:
    """The cell table's header and rows as text (what both reports show)."""
    header = [*study.settings, "n", "failed", "PSNR dB", "reference dB", "leakage dB", "SSIM", "label acc",
              "re-id", "seconds", "verdict"]
    found = cells(study) if found is None else found
    cosine = any(c.gradient_cosine is not None for c in found)
    mapping = any(c.mapping_accuracy is not None for c in found)
    exact = any(c.exact_share is not None and c.exact_share > 0 for c in found)
    if cosine:
        header.insert(-1, "grad cos")
    if mapping:
        header.insert(-1, "mapping acc")
    if exact:
        header.insert(-1, "exact share")
    rows = []
    for c in found:
        row = [*c.values.values(), str(c.n), str(len(c.failed)), fmt_interval(c.psnr), fmt(c.reference_psnr),
               fmt_interval(c.leakage_db, signed=True), fmt(c.ssim, ".3f"), fmt(c.label_accuracy),
               fmt(c.reid_top1), fmt(c.seconds), c.verdict]
        if cosine:
            row.insert(-1, fmt(c.gradient_cosine, ".3f"))
        if mapping:
            row.insert(-1, fmt(c.mapping_accuracy))
        if exact:
            row.insert(-1, fmt(c.exact_share))
        rows.append(row)
    return header, rows


def paired_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """A comparison's header and rows as text; ``n`` below `MIN_PAIRS_FOR_CLAIM` is marked ``*``."""
    setting_axes = list(dict.fromkeys(k for r in comparison.rows for k in r.setting))
    header = [comparison.axis, *setting_axes, "pairs", "leakage diff dB", "PSNR diff dB", "verdict"]
    rows = []
    for r in comparison.rows:
        where = ["(all)" if r.pooled else r.setting.get(a, "") for a in setting_axes]
        mark = "*" if r.n < MIN_PAIRS_FOR_CLAIM else ""
        rows.append([r.value, *where, f"{r.n}{mark}", fmt_interval(r.diff, signed=True), fmt(r.psnr_diff, "+.2f"),
                     r.verdict])
    return header, rows


def aligned(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """A plain-text table: columns padded to their widest cell, two spaces apart, a rule under the header."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    lines = [indent + "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *rows)]
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _replicates_text(study: StudyResults) -> str:
    return ", ".join(study.replicates) or "no replicate axis"


def text_report(directory: str | Path) -> str:
    """The study's cell table and paired tables as aligned plain text (terminals, benchmark logs).

    Raises:
        ConfigError: as `load_study`.
    """
    study = load_study(directory)
    ok = sum(r.ok for r in study.rows)
    lines = [f"study {study.name}" + (f": {study.description}" if study.description else "")]
    if study.command:
        lines.append(f"command: {study.command}")
    lines.append(f"runs: {ok} finished, {len(study.failed)} failed, of {study.total} planned"
                 f" ({study.folder / 'results.csv'})")
    lines += ["", f"cells: mean ± 95 % t-interval over {_replicates_text(study)}; reference = the no-leak PSNR"
                  " (DESIGN §8); leakage = PSNR − reference",
              aligned(*cell_table(study)) if study.rows else "  (results.csv holds no run yet)"]
    for comparison in comparisons(study):
        lines += ["", f"paired: {comparison.axis} against {comparison.baseline} (leakage difference, runs equal in"
                      " every other axis; (all) pools every setting)",
                  aligned(*paired_table(comparison)) if comparison.rows else "  (no runs to pair yet)"]
        if any(r.n < MIN_PAIRS_FOR_CLAIM for r in comparison.rows):
            lines.append(f"  * fewer than {MIN_PAIRS_FOR_CLAIM} pairs: too few for a claim (DESIGN §8)")
    if study.failed:
        lines += ["", "failed runs:"]
        lines += [f"  {r.id}  {describe_values(r.values)}: {r.error or '(no error recorded)'}" for r in study.failed]
    return "\n".join(lines) + "\n"


def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the study's self-contained HTML report (default ``DIR/report.html``) atomically; return its path.

    The page embeds everything (CSS, images and plots as base64 data: URIs, the CSV as a download link) and
    needs no network. See `fedinvert.report.html.render_study` for what it shows.

    Raises:
        ConfigError: as `load_study`, or the report cannot be written.
    """
    from fedinvert.report.html import render_study

    study = load_study(directory)
    target = Path(out) if out is not None else study.folder / "report.html"
    if target.is_dir():
        raise ConfigError(f"report: --out {target} is a folder; give a file name such as {target / 'report.html'}")
    page = render_study(study, target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"report: cannot write {target} ({err.strerror or err})") from None
    return target


__all__ = [
    "Cell", "Comparison", "Interval", "PairedRow", "RunRow", "StudyResults", "cells", "comparisons", "load_study",
    "t_interval", "text_report", "write_report",
]
