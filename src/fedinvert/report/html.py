"""The study report as one self-contained HTML page (`fedinvert.report.study.write_report` writes it).

Everything the page shows travels inside it: the CSS inline, every picture (the runs' ``reconstruction.png``
and ``stages.png``, the plots drawn here with matplotlib's Agg canvas) as a base64 ``data:`` URI, and the CSV of
all runs as a ``data:`` download link beside the link to ``results.csv``. No network, no web fonts, no script
library: one small inline script records, once the page has loaded, how many images decoded and how many tables
hold rows in ``<body data-check>`` (what the test reads back from a headless browser). Every string that comes
from the study folder is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedinvert import __version__
from fedinvert.report.study import (
    MIN_PAIRS_FOR_CLAIM,
    Cell,
    Comparison,
    RunRow,
    StudyResults,
    cell_table,
    cells,
    comparisons,
    describe_values,
    fmt,
    paired_table,
)

#: how many replicates of a cell show their reconstruction (and GIFD stage rows) on the page
IMAGES_PER_CELL = 3

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em auto;
       max-width: 72em; padding: 0 1em; color: #1a1a1a; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
h3 { margin: 1.2em 0 0.3em; font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eef1f5; } tbody tr:nth-child(even) { background: #f8f9fb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.ref { color: #555; } .leaks { color: #a40000; font-weight: 600; } .none { color: #555; }
pre { background: #f4f4f4; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; }
figure { margin: 0.3em 0 0.8em; } .runs { display: flex; flex-wrap: wrap; gap: 0.5em 1.5em; align-items: flex-start; }
.runs figure { max-width: 28em; } figcaption { font-size: 0.85em; color: #333; } img { image-rendering: pixelated; max-width: 100%; }
img.plot { image-rendering: auto; } .note { color: #555; font-size: 0.9em; }
"""

_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var tables = Array.prototype.slice.call(document.querySelectorAll("table"));
  var filled = tables.filter(function (t) { return t.querySelectorAll("tbody tr").length > 0; }).length;
  document.body.setAttribute("data-check", "images=" + images.length + " loaded=" + loaded +
    " tables=" + tables.length + " filled=" + filled);
});
"""

_NUMERIC_HEADERS = {"n", "failed", "pairs", "PSNR dB", "reference dB", "leakage dB", "SSIM", "label acc", "re-id",
                    "grad cos", "mapping acc",
                    "seconds", "leakage diff dB", "PSNR diff dB", "distance", "PSNR", "leakage"}


def esc(value: Any) -> str:
    """``value`` as text, HTML-escaped (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, mark: int | None = None,
           reference: str = "reference dB") -> str:
    """An HTML table of text cells; column ``mark`` (a verdict) is styled by whether it reports a leak."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells_html = []
        for i, (name, value) in enumerate(zip(header, row, strict=True)):
            classes = []
            if name in _NUMERIC_HEADERS:
                classes.append("num")
            if name == reference:
                classes.append("ref")
            if i == mark:
                classes.append("leaks" if value.startswith(("leaks", "+", "-", "−")) else "none")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells_html.append(f"<td{attr}>{esc(value)}</td>")
        body.append(f"<tr>{''.join(cells_html)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _embed(path: Path, alt: str) -> str:
    """An ``<img>`` of the PNG file ``path`` as a data: URI, or a note when it is missing or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return f'<p class="note">{esc(path.name)} is missing</p>'
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return f'<p class="note">{esc(path.name)} is not a PNG file</p>'
    return f'<img src="{_png_uri(data)}" alt="{esc(alt)}">'


def _stage_table(stages: Sequence[Any]) -> str:
    rows = []
    for s in stages:
        if not isinstance(s, dict):
            continue
        rows.append([str(s.get("stage", "?")), _number(s.get("distance"), ".4g"), _number(s.get("psnr"), ".2f"),
                     _number(s.get("leakage_db"), "+.2f"), "returned" if s.get("chosen") else ""])
    if not rows:
        return ""
    return _table(["stage", "distance", "PSNR", "leakage", "answer"], rows)


def _number(value: Any, spec: str) -> str:
    return format(float(value), spec) if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


def _replicate_label(study: StudyResults, row: RunRow) -> str:
    return describe_values({a: row.values[a] for a in study.replicates}) or row.id


def _cell_section(study: StudyResults, cell: Cell, index: int) -> str:
    parts = [f'<h3 id="cell-{index}">{esc(cell.label)}</h3>',
             f'<p>n = {cell.n}, failed {len(cell.failed)} · PSNR {esc(fmt(cell.psnr.mean if cell.psnr else None))} dB'
             f' beside the no-leak reference {esc(fmt(cell.reference_psnr))} dB · {esc(cell.verdict)}</p>']
    if not cell.runs:
        parts.append('<p class="note">no finished run in this cell</p>')
    shown = cell.runs[:IMAGES_PER_CELL]
    parts.append('<div class="runs">')
    for row in shown:
        label = _replicate_label(study, row)
        caption = (f"{label} · run {row.id} · PSNR {fmt(row.metrics['psnr'])} dB, reference"
                   f" {fmt(row.metrics['reference_psnr'])} dB, leakage {fmt(row.metrics['leakage_db'], '+.2f')} dB")
        if row.folder is None:
            parts.append(f'<p class="note">{esc(caption)}: its folder lies outside the study folder</p>')
            continue
        parts.append(f"<figure>{_embed(row.folder / 'reconstruction.png', f'reconstruction of {label}')}"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
        stages_png = row.folder / "stages.png"
        metrics = row.run_metrics() or {}
        if stages_png.is_file() or metrics.get("stages"):
            stage_img = _embed(stages_png, f"stages of {label}") if stages_png.is_file() else ""
            parts.append(f"<figure>{stage_img}<figcaption>GIFD stages of {esc(label)}</figcaption>"
                         f"{_stage_table(metrics.get('stages') or [])}</figure>")
    parts.append("</div>")
    if len(cell.runs) > len(shown):
        parts.append(f'<p class="note">{len(cell.runs) - len(shown)} more replicates in results.csv</p>')
    return "\n".join(parts)


# -- plots ------------------------------------------------------------------------------------------------
def _numeric(text: str) -> float | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def numeric_axes(study: StudyResults, found: Sequence[Cell]) -> list[str]:
    """The non-replicate axes whose every cell value is a number, with at least two distinct values."""
    axes = []
    for axis in study.settings:
        values = [_numeric(c.values[axis]) for c in found if c.runs]
        if values and all(v is not None for v in values) and len(set(values)) >= 2:
            axes.append(axis)
    return axes


def _half(interval: Any) -> float:
    return 0.0 if interval is None or math.isinf(interval.half) else float(interval.half)


def axis_plot(study: StudyResults, found: Sequence[Cell], axis: str) -> bytes:
    """PNG: PSNR (with each line's no-leak reference dashed) and leakage (with the 0 dB line) against ``axis``.

    One line per combination of the other non-replicate axes; error bars are the 95 % t-intervals (none for a
    cell with one replicate).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    lines: dict[str, list[Cell]] = {}
    for c in found:
        if c.runs and c.psnr is not None:
            rest = {k: v for k, v in c.values.items() if k not in study.partners(axis)}
            lines.setdefault(describe_values(rest) or "all", []).append(c)
    fig = Figure(figsize=(10, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    xs_all: list[float] = []
    for i, (name, group) in enumerate(lines.items()):
        group = sorted(group, key=lambda c: _numeric(c.values[axis]) or 0.0)
        xs = [_numeric(c.values[axis]) or 0.0 for c in group]
        xs_all += xs
        color = f"C{i % 10}"
        left.errorbar(xs, [c.psnr.mean for c in group if c.psnr], yerr=[_half(c.psnr) for c in group],
                      color=color, marker="o", capsize=3, label=name)
        refs = [(x, c.reference_psnr) for x, c in zip(xs, group, strict=True) if c.reference_psnr is not None]
        if refs:
            left.plot([x for x, _ in refs], [r for _, r in refs], color=color, linestyle="--", linewidth=1)
        leak = [(x, c) for x, c in zip(xs, group, strict=True) if c.leakage_db is not None]
        right.errorbar([x for x, _ in leak], [c.leakage_db.mean for _, c in leak if c.leakage_db],
                       yerr=[_half(c.leakage_db) for _, c in leak], color=color, marker="o", capsize=3, label=name)
    right.axhline(0.0, color="black", linewidth=1, linestyle="--")
    log = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10
    ticks = sorted(set(xs_all))
    for ax, ylabel in ((left, "PSNR dB (dashed: no-leak reference)"), (right, "leakage dB (dashed: 0 = no leak)")):
        ax.set_xlabel(axis)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        if log:
            ax.set_xscale("log")
        if len(ticks) <= 12:  # the axis's own values (batch sizes, noise levels), not 1.2, 1.4, ...
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(ticks, [format(t, "g") for t in ticks])
    if len(lines) > 1:
        right.legend(fontsize=7, loc="best")
    fig.suptitle(f"{study.name}: against {axis} (95 % intervals over {', '.join(study.replicates) or 'runs'})",
                 fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# -- the page ---------------------------------------------------------------------------------------------
def _csv_links(study: StudyResults, target: Path) -> str:
    source = study.folder / "results.csv"
    try:
        data = source.read_bytes()
    except OSError:
        data = b""
    try:
        href = os.path.relpath(source.resolve(), target.resolve().parent)
    except ValueError:  # another drive (Windows)
        href = source.resolve().as_uri()
    uri = "data:text/csv;charset=utf-8;base64," + base64.b64encode(data).decode("ascii")
    name = f"{study.name}-results.csv"
    return (f'<p>All runs: <a href="{esc(Path(href).as_posix())}">results.csv</a> beside this page'
            f' · <a download="{esc(name)}" href="{uri}">download the CSV embedded in this page</a></p>')


def _runs_table(study: StudyResults) -> str:
    header = ["id", "status", *study.axes, "PSNR dB", "reference dB", "leakage dB", "folder"]
    rows = [[r.id, r.status, *r.values.values(), fmt(r.metrics["psnr"]), fmt(r.metrics["reference_psnr"]),
             fmt(r.metrics["leakage_db"], "+.2f"),
             "" if r.folder is None else r.folder.relative_to(study.folder.resolve()).as_posix()]
            for r in study.rows]
    return _table(header, rows) if rows else '<p class="note">results.csv holds no run</p>'


def _comparison_section(comparison: Comparison) -> str:
    header, rows = paired_table(comparison)
    note = ""
    if any(r.n < MIN_PAIRS_FOR_CLAIM for r in comparison.rows):
        note = f'<p class="note">* fewer than {MIN_PAIRS_FOR_CLAIM} pairs: too few for a claim (DESIGN §8).</p>'
    return (f"<h3>{esc(comparison.axis)}: each value − {esc(comparison.baseline)}</h3>"
            "<p>Difference of the leakage (dB) between runs equal in every other axis, replicates included;"
            " mean ± 95 % t-interval over the pairs; <em>(all)</em> pools the pairs of every setting. An interval"
            " that holds 0 says <em>not resolved</em>, not <em>equal</em>.</p>"
            + (f"{_table(header, rows, mark=len(header) - 1)}{note}" if rows else '<p class="note">no runs to pair yet</p>'))


def render_study(study: StudyResults, target: Path) -> str:
    """The page for ``study``, to be written at ``target`` (links to results.csv are relative to it).

    Sections: the study (name, description, command, run counts, the CSV links), the cell table (mean ± 95 %
    t-interval, the no-leak reference beside every cell, the verdict), the paired comparisons, plots against
    each numeric non-replicate axis, per cell the reconstructions of its first replicates (with GIFD's stage rows
    and a table of stage, distance and PSNR), the failed runs with their errors, and a table of all runs.
    """
    found = cells(study)
    header, rows = cell_table(study, found)
    ok = sum(r.ok for r in study.rows)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(study.name)} · fedinvert study report</title>", f"<style>{_CSS}</style>",
        f"<script>{_CHECK_SCRIPT}</script>", "</head>", "<body>",
        f"<h1>{esc(study.name)}</h1>",
    ]
    if study.description:
        parts.append(f"<p>{esc(study.description)}</p>")
    if study.command:
        parts.append(f"<pre><code>{esc(study.command)}</code></pre>")
    parts += [
        f"<p>{ok} runs finished, {len(study.failed)} failed, of {study.total} planned · axes"
        f" {esc(', '.join(study.axes) or 'none')} · replicates {esc(', '.join(study.replicates) or 'none')}"
        f" · fedinvert {esc(__version__)}</p>",
        _csv_links(study, target),
        "<h2>Cells</h2>",
        f"<p>Mean ± 95 % Student-t interval over {esc(', '.join(study.replicates) or 'the runs')} (the private"
        " batches). <em>reference</em> is the PSNR an attacker reaches without the update (the best constant, mean"
        " or random other image: DESIGN §8); <em>leakage</em> is PSNR − reference. A cell whose leakage interval"
        " does not lie wholly above 0 dB says <em>no leak measured</em>: such cells are not ranked.</p>",
        _table(header, rows, mark=len(header) - 1) if rows else '<p class="note">results.csv holds no run yet</p>',
    ]
    found_comparisons = comparisons(study)
    if found_comparisons:
        parts.append("<h2>Paired comparisons</h2>")
        parts += [_comparison_section(c) for c in found_comparisons]
    axes = numeric_axes(study, found)
    if axes:
        parts.append("<h2>Plots</h2>")
        for axis in axes:
            parts.append(f'<figure><img class="plot" src="{_png_uri(axis_plot(study, found, axis))}"'
                         f' alt="PSNR and leakage against {esc(axis)}"><figcaption>PSNR and leakage against'
                         f" {esc(axis)}; one line per setting of the other axes</figcaption></figure>")
    parts.append("<h2>Reconstructions</h2>")
    parts.append('<p class="note">Each picture: the private row above the reconstruction (matched), then the'
                 " no-leak guess; its caption gives the run's numbers.</p>")
    parts += [_cell_section(study, c, i) for i, c in enumerate(found)]
    parts.append("<h2>Failed runs</h2>")
    if study.failed:
        parts.append(_table(["id", *study.axes, "error"],
                            [[r.id, *r.values.values(), r.error or "(no error recorded)"] for r in study.failed]))
    else:
        parts.append('<p class="note">none</p>')
    parts += ["<h2>All runs</h2>", f"<details><summary>{len(study.rows)} rows of results.csv</summary>",
              _runs_table(study), "</details>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


__all__ = ["axis_plot", "numeric_axes", "render_study"]
