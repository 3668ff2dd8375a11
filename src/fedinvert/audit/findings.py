"""From the audit's stored runs to what leaked and what to change: statistics, recommendations, audit.txt/json.

Every number comes from the runs in the audit folder's ``results.csv`` (read with
`fedinvert.report.study.load_study`) and from the accuracy measurements (`fedinvert.audit.utility`): a
condition's PSNR, leakage over the no-leak reference and label accuracy are mean ± 95 % t-intervals over its
private batches (`fedinvert.report.study.t_interval`); "which change lowered leakage by how much" is the paired
difference of two conditions on the same private batches (same ``seed`` and ``dataset.batch``), reported as a
change only when its interval excludes 0 and with fewer than `MIN_PAIRS_FOR_CLAIM` pairs marked as too few.

A threat leaks when its leakage interval lies wholly above 0 dB, *or* when its reconstructions re-identify their
private images more often than chance (one-sided binomial test over all the condition's images at
`REID_ALPHA`): a PSNR interval made wide by a few failed batches must not hide that most images were
recognisable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scipy.stats import binomtest

from fedinvert.audit.battery import PHASES, Condition, defense_text
from fedinvert.audit.utility import Utility
from fedinvert.report.study import (
    MIN_PAIRS_FOR_CLAIM,
    NO_LEAK,
    Interval,
    RunRow,
    fmt_interval,
    leak_verdict,
    t_interval,
)

REID_ALPHA = 0.01
"""Significance level of the re-identification test (one-sided binomial against chance 1 / (M + 1))."""

FAMILY_TEXT = {"optimization": "optimisation-based", "generation": "generation-based", "analysis": "analysis-based"}

SURVEY_ADVICE = {
    "network design": "wider and deeper networks, no sigmoid activations, larger inputs per update",
    "training protocol": "larger batches, several local steps before sharing (FedAvg), DP noise and clipping,"
                         " gradient pruning",
    "client verification": "check every received model with `fedinvert verify-model` before training on it",
}
"""The survey's general advice per phase (Guo et al., TPAMI 2025), printed as such where it was not measured."""


@dataclass(frozen=True)
class ConditionResult:
    """The measured numbers of one battery condition (None where no run reports them)."""

    condition: Condition
    runs: list[RunRow]
    failed: int
    psnr: Interval | None
    leakage: Interval | None
    reference: float | None
    reid: float | None
    reid_chance: float | None
    labels: Interval | None
    utility: Utility | None = None
    reid_hits: int = 0
    reid_images: int = 0

    @property
    def reid_pvalue(self) -> float | None:
        """One-sided binomial p-value of ``reid_hits`` of ``reid_images`` against ``reid_chance``."""
        if self.reid_chance is None or self.reid_images == 0:
            return None
        return float(binomtest(self.reid_hits, self.reid_images, self.reid_chance, alternative="greater").pvalue)

    @property
    def reidentifies(self) -> bool:
        """Re-identification significantly above chance (`REID_ALPHA`)."""
        p = self.reid_pvalue
        return p is not None and p < REID_ALPHA

    @property
    def leaks(self) -> bool:
        return (self.leakage is not None and self.leakage.low > 0) or self.reidentifies

    @property
    def verdict(self) -> str:
        if not self.runs:
            return "no finished run"
        if self.reidentifies and not (self.leakage is not None and self.leakage.low > 0):
            return f"leaks: re-identified {self.reid_hits} of {self.reid_images} images (p = {self.reid_pvalue:.1e})"
        return leak_verdict(self.leakage)


@dataclass(frozen=True)
class Difference:
    """``condition − baseline`` on the same private batches: leakage (dB) and test accuracy (points)."""

    condition: str
    baseline: str
    leakage: Interval | None
    accuracy: Interval | None
    either_leaks: bool

    @property
    def resolved(self) -> bool:
        return self.leakage is not None and self.leakage.excludes_zero

    def text(self) -> str:
        """``leakage −3.10 ± 1.20 dB`` (``not resolved (…)``, ``*`` below 8 pairs) and the accuracy change."""
        if self.leakage is None:
            return "no pairs"
        few = "*" if self.leakage.n < MIN_PAIRS_FOR_CLAIM else ""
        shown = f"{fmt_interval(self.leakage, signed=True)} dB{few}"
        leak = f"leakage {shown}" if self.resolved else f"leakage not resolved ({shown})"
        if self.resolved and not self.either_leaks:
            leak += ", neither side leaks"
        return leak


@dataclass
class Findings:
    """Everything audit.txt, audit.json and audit.html show."""

    header: list[str]
    results: dict[str, ConditionResult]
    differences: list[Difference]
    recommendations: dict[str, list[str]]
    verify: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    accuracy_method: str = ""


def _key(row: RunRow) -> tuple[str, str]:
    return row.values.get("seed", ""), row.values.get("dataset.batch", "")


def _interval(rows: list[RunRow], key: str) -> Interval | None:
    values = [v for r in rows if (v := r.metrics.get(key)) is not None]
    return t_interval(values) if values else None


def reid_counts(rows: list[RunRow]) -> tuple[int, int, float | None]:
    """(images re-identified, images, chance) over the runs' ``metrics.json``: each run contributes its batch
    (``per_image``) with ``round(reid_top1 · B)`` hits; chance is 1 / (M + 1) for M distractors (the largest M
    of the runs, the most conservative). Runs without a folder or a re-identification score are left out."""
    hits = images = 0
    distractors: list[int] = []
    for row in rows:
        metrics = row.run_metrics() or {}
        batch, m, share = len(metrics.get("per_image") or []), metrics.get("reid_distractors"), metrics.get("reid_top1")
        if not batch or not isinstance(m, int) or not isinstance(share, (int, float)):
            continue
        hits += round(float(share) * batch)
        images += batch
        distractors.append(m)
    return hits, images, (1.0 / (max(distractors) + 1) if distractors else None)


def condition_result(condition: Condition, rows: list[RunRow], utility: Utility | None) -> ConditionResult:
    """The mean ± 95 % numbers of one condition from its rows of results.csv (and, for the re-identification
    test, its runs' metrics.json)."""
    ok = [r for r in rows if r.ok]
    reid = [v for r in ok if (v := r.metrics.get("reid_top1")) is not None]
    reference = [v for r in ok if (v := r.metrics.get("reference_psnr")) is not None]
    hits, images, chance = reid_counts(ok)
    return ConditionResult(
        condition=condition, runs=ok, failed=len(rows) - len(ok), psnr=_interval(ok, "psnr"),
        leakage=_interval(ok, "leakage_db"), reference=sum(reference) / len(reference) if reference else None,
        reid=sum(reid) / len(reid) if reid else None, reid_chance=chance, labels=_interval(ok, "label_accuracy"),
        utility=utility, reid_hits=hits, reid_images=images,
    )


def paired(a: ConditionResult, b: ConditionResult) -> Difference:
    """``a − b`` over the private batches both hold (leakage), and over the test images (accuracy, points)."""
    base = {_key(r): r for r in b.runs if r.metrics.get("leakage_db") is not None}
    diffs = [r.metrics["leakage_db"] - base[_key(r)].metrics["leakage_db"]  # type: ignore[operator]
             for r in a.runs if r.metrics.get("leakage_db") is not None and _key(r) in base]
    accuracy = None
    if a.utility is not None and b.utility is not None:
        accuracy = t_interval([100.0 * (x - y) for x, y in zip(a.utility.correct, b.utility.correct, strict=True)])
    return Difference(a.condition.key, b.condition.key, t_interval(diffs) if diffs else None, accuracy,
                      either_leaks=a.leaks or b.leaks)


def _accuracy_text(result: ConditionResult, diff: Difference | None) -> str:
    if result.utility is None:
        return "test accuracy not measured"
    text = f"test accuracy {100 * result.utility.accuracy:.1f} %"
    if diff is not None and diff.accuracy is not None:
        text += f" ({fmt_interval(diff.accuracy, '.1f', signed=True)} points)"
    return text


def threat_line(result: ConditionResult) -> str:
    """One line: what an attack family got from the setup, against the no-leak reference."""
    c = result.condition
    if not result.runs:
        return f"{FAMILY_TEXT[c.family]}: no finished run ({result.failed} failed; errors in results.csv)"
    leakage = fmt_interval(result.leakage, signed=True)
    verdict = "LEAKS" if result.leaks else NO_LEAK
    reid = "" if result.reid is None else f", re-identified {100 * result.reid:.0f} %"
    if result.reid_pvalue is not None and result.reid_chance is not None:
        reid += f" (chance {100 * result.reid_chance:.0f} %, p = {result.reid_pvalue:.1e})"
    return (f"{FAMILY_TEXT[c.family]} ({c.label}): PSNR {fmt_interval(result.psnr)} dB vs reference"
            f" {result.reference or 0:.2f} dB → leakage {leakage} dB: {verdict}{reid} (n={len(result.runs)})")


def build_findings(header: list[str], conditions: list[Condition], rows: list[RunRow],
                   utilities: dict[str, Utility], verify: list[dict[str, Any]], notes: list[str],
                   *, chance: float | None, accuracy_method: str, model_notes: list[str]) -> Findings:
    """Statistics, paired differences and the three-phase recommendations of an audit."""
    by_condition: dict[str, list[RunRow]] = {}
    for row in rows:
        by_condition.setdefault(row.values.get("condition", ""), []).append(row)
    results = {c.key: condition_result(c, by_condition.get(c.key, []), utilities.get(c.key)) for c in conditions}
    setup, none = results["op"], results.get("none")
    differences: list[Difference] = []
    if none is not None:
        differences.append(paired(setup, none))
    for key, result in results.items():
        if result.condition.kind == "defence" and key.startswith("alone:") and none is not None:
            differences.append(paired(result, none))
        elif result.condition.kind in ("defence", "lever"):
            differences.append(paired(result, setup))
    recommendations = _recommend(results, differences, verify, chance=chance, model_notes=model_notes)
    return Findings(header, results, differences, recommendations, verify, notes, accuracy_method)


def _change_line(result: ConditionResult, diff: Difference, against: str) -> str:
    return f"{result.condition.label}: {diff.text()} vs {against}, {_accuracy_text(result, diff)}"


def _recommend(results: dict[str, ConditionResult], differences: list[Difference], verify: list[dict[str, Any]],
               *, chance: float | None, model_notes: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {phase: [] for phase in PHASES}
    setup = results["op"]
    by_key = {(d.condition, d.baseline): d for d in differences}
    changes: list[tuple[ConditionResult, Difference]] = []
    for result in results.values():
        phase = result.condition.phase
        if phase is None:
            continue
        against = "none" if result.condition.key.startswith("alone:") else "op"
        diff = by_key[(result.condition.key, against)]
        out[phase].append(_change_line(result, diff, "no defence" if against == "none" else "your setup"))
        if against == "op":
            changes.append((result, diff))
    if ("op", "none") in by_key:
        none = results["none"]
        diff = by_key[("op", "none")]
        out["training protocol"].insert(0, f"your defences ({defense_text(setup.condition.defense)}):"
                                           f" {diff.text()} vs no defence, {_accuracy_text(setup, diff)}"
                                           f" (no defence: {_accuracy_text(none, None)[len('test accuracy '):]})")
    lowered = sorted((c for c in changes if c[1].resolved and c[1].leakage.mean < 0),  # type: ignore[union-attr]
                     key=lambda c: c[1].leakage.mean)  # type: ignore[union-attr]
    if not setup.leaks:
        verdict = (f"→ your setup shows no leak above the no-leak reference at this budget"
                   f" (leakage {fmt_interval(setup.leakage, signed=True)} dB); on this evidence no change is needed")
    elif lowered:
        best, diff = lowered[0]
        after = ("it still leaks" if best.leaks else
                 f"no leak measured with it (leakage {fmt_interval(best.leakage, signed=True)} dB"
                 + ("" if best.reid is None else f", re-identified {100 * best.reid:.0f} %") + ")")
        verdict = (f"→ measured best: {best.condition.label} ({diff.text()} vs your setup,"
                   f" {_accuracy_text(best, diff)}); {after}")
    else:
        verdict = "→ your setup leaks and no measured change lowered leakage resolvably at this budget"
    out["training protocol"].append(verdict)
    for phase in ("network design", "training protocol"):
        out[phase].append(f"survey's general advice (not all measured here): {SURVEY_ADVICE[phase]}")
    out["network design"][:0] = model_notes
    for item in verify:
        out["client verification"].append(item["line"])
    out["client verification"].append(f"survey's general advice: {SURVEY_ADVICE['client verification']}")
    return out


def summary_lines(findings: Findings, *, chance: float | None, files: list[str]) -> list[str]:
    """audit.txt: one screen (≈ 40 lines)."""
    lines = [*findings.header, "", "What leaked (mean ± 95 % over the private batches; leakage = PSNR − the no-leak"
             " reference; below or within it: no leak measured):"]
    threats = [r for r in findings.results.values() if r.condition.kind == "threat"]
    lines += [f"  {threat_line(r)}" for r in threats]
    setup = findings.results["op"]
    if setup.labels is not None:
        against = "" if chance is None else f" (chance {chance:.2f})"
        lines.append(f"  label inference: label accuracy {fmt_interval(setup.labels)}{against}")
    else:
        lines.append("  label inference: no label accuracy recorded")
    lines += [f"  {note}" for note in findings.notes]
    lines.append("")
    lines.append("Recommendations (each change measured on the same private batches; * fewer than"
                 f" {MIN_PAIRS_FOR_CLAIM} pairs):")
    for number, phase in enumerate(PHASES, start=1):
        lines.append(f"  {number}. {phase}")
        lines += [f"     - {line}" for line in findings.recommendations[phase]]
    lines += ["", f"accuracy cost: {findings.accuracy_method}", f"files: {', '.join(files)}"]
    return lines


def _interval_json(interval: Interval | None) -> dict[str, Any] | None:
    if interval is None:
        return None
    return {"mean": interval.mean, "half": None if interval.half == float("inf") else interval.half, "n": interval.n}


def findings_json(findings: Findings) -> dict[str, Any]:
    """audit.json's ``conditions``, ``differences``, ``recommendations`` and ``verify``."""
    conditions = []
    for key, r in findings.results.items():
        c = r.condition
        conditions.append({
            "key": key, "kind": c.kind, "family": c.family, "phase": c.phase, "label": c.label,
            "overrides": list(c.overrides), "runs": [row.id for row in r.runs], "failed": r.failed,
            "psnr": _interval_json(r.psnr), "leakage_db": _interval_json(r.leakage), "reference_psnr": r.reference,
            "reid_top1": r.reid, "reid_images": r.reid_images, "reid_hits": r.reid_hits,
            "reid_chance": r.reid_chance, "reid_pvalue": r.reid_pvalue, "leaks": r.leaks,
            "label_accuracy": _interval_json(r.labels), "verdict": r.verdict,
            "test_accuracy": None if r.utility is None else r.utility.accuracy,
            "accuracy_rounds": None if r.utility is None else r.utility.rounds,
        })
    differences = [{"condition": d.condition, "baseline": d.baseline, "leakage_db": _interval_json(d.leakage),
                    "accuracy_points": _interval_json(d.accuracy), "resolved": d.resolved, "text": d.text()}
                   for d in findings.differences]
    return {"conditions": conditions, "differences": differences, "recommendations": findings.recommendations,
            "verify": findings.verify, "notes": findings.notes, "accuracy_method": findings.accuracy_method}
