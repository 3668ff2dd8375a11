"""audit.html: the audit as one self-contained page (inline CSS, pictures as data: URIs, no network), in the
look of the study report (`fedinvert.report.html`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedinvert import __version__
from fedinvert.audit.battery import PHASES
from fedinvert.audit.findings import FAMILY_TEXT, Findings
from fedinvert.report.html import _CHECK_SCRIPT, _CSS, _embed, _table, esc
from fedinvert.report.study import fmt, fmt_interval


def _conditions_table(findings: Findings) -> str:
    header = ["condition", "what", "n", "failed", "PSNR dB", "reference dB", "leakage dB", "re-id", "label acc",
              "test accuracy", "verdict"]
    rows = []
    for key, r in findings.results.items():
        accuracy = "n/a" if r.utility is None else f"{100 * r.utility.accuracy:.1f} %"
        rows.append([key, r.condition.label, str(len(r.runs)), str(r.failed), fmt_interval(r.psnr),
                     fmt(r.reference), fmt_interval(r.leakage, signed=True), fmt(r.reid), fmt_interval(r.labels),
                     accuracy, r.verdict])
    return _table(header, rows, mark=len(header) - 1)


def _differences_table(findings: Findings) -> str:
    header = ["condition", "against", "pairs", "leakage diff dB", "test accuracy diff (points)", "verdict"]
    rows = [[d.condition, d.baseline, str(0 if d.leakage is None else d.leakage.n),
             fmt_interval(d.leakage, signed=True), fmt_interval(d.accuracy, ".1f", signed=True), d.text()]
            for d in findings.differences]
    return _table(header, rows) if rows else '<p class="note">no change was measured</p>'


def _pictures(findings: Findings, folders: dict[str, Path]) -> str:
    parts = []
    for key, r in findings.results.items():
        folder = folders.get(key)
        if folder is None:
            continue
        family = FAMILY_TEXT[r.condition.family] if r.condition.kind == "threat" else r.condition.kind
        parts.append(f"<figure>{_embed(folder / 'reconstruction.png', key)}<figcaption>{esc(key)} ({esc(family)}):"
                     f" {esc(r.condition.label)}; first private batch</figcaption></figure>")
    return f'<div class="runs">{"".join(parts)}</div>' if parts else '<p class="note">no finished run</p>'


def render_audit(findings: Findings, summary: Sequence[str], folders: dict[str, Path]) -> str:
    """The page: the one-screen summary, the three phases, every condition, the paired changes, verify-model's
    findings and one reconstruction per condition; the full study report is ``report.html`` beside it."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>fedinvert audit</title>", f"<style>{_CSS}</style>", f"<script>{_CHECK_SCRIPT}</script>",
        "</head>", "<body>", "<h1>fedinvert audit</h1>",
        *[f"<p>{esc(line)}</p>" for line in findings.header],
        "<h2>Summary</h2>", f"<pre>{esc(chr(10).join(summary))}</pre>",
        "<h2>Recommendations</h2>",
    ]
    for number, phase in enumerate(PHASES, start=1):
        items = "".join(f"<li>{esc(line)}</li>" for line in findings.recommendations[phase])
        parts.append(f"<h3>{number}. {esc(phase)}</h3><ul>{items}</ul>")
    parts += [
        "<h2>Every condition</h2>",
        "<p>Mean ± 95 % Student-t interval over the private batches. <em>reference</em> is the PSNR an attacker"
        " reaches without the update (DESIGN §8); <em>leakage</em> is PSNR − reference; a leakage interval not"
        " wholly above 0 dB is <em>no leak measured</em>.</p>",
        _conditions_table(findings),
        "<h2>Paired changes</h2>",
        "<p>Each change against your setup (a defence on its own: against no defence), on the same private"
        " batches; the accuracy difference is paired over the test images.</p>",
        _differences_table(findings),
        f'<p class="note">accuracy cost: {esc(findings.accuracy_method)}</p>',
        "<h2>verify-model</h2>",
    ]
    for item in findings.verify:
        parts.append(f"<p>{esc(item['line'])}</p>")
        if item.get("findings"):
            parts.append(_table(["check", "layer", "passed", "reason"],
                                [[f["check"], f["layer"] or "", "yes" if f["passed"] else "NO", f["reason"]]
                                 for f in item["findings"]]))
    if findings.notes:
        parts += ["<h2>Not measured</h2>", "<ul>", *[f"<li>{esc(n)}</li>" for n in findings.notes], "</ul>"]
    parts += ["<h2>Reconstructions</h2>",
              '<p class="note">Private row above the matched reconstruction, then the no-leak guess.</p>',
              _pictures(findings, folders),
              f'<p class="note">Every run: report.html and results.csv in this folder · fedinvert {esc(__version__)}</p>',
              "</body>", "</html>"]
    return "\n".join(parts) + "\n"


__all__ = ["render_audit"]
