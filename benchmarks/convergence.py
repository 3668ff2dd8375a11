"""PSNR and leakage against the attack budget, log-spaced up to each paper's budget: where does an attack stop
gaining?

Each cell is one attack in one fixed setting, run through ``fedinvert.runner`` on ``--batches`` private batches
(B = 1, distinct images, batch k with seed k: its own victim and start, the same at every budget, so budgets
pair batch by batch). Every budget is a separate run, because the schedules depend on the total. Labels are
inferred (iDLG at B = 1), one restart unless ``--restarts`` says otherwise, eager steps (``attack.compile=false``:
compile time would dominate the short runs), the data sets' default normalisation.

=================  ===========================================================  ===============================
cell               setting                                                      budget axis (paper's largest)
=================  ===========================================================  ===============================
ig                 inverting_gradients, lenet-dlg, photos 32 px                 iterations (IG: 24,000)
gradinversion      gradinversion, convnet (half width), photos 32 px            iterations (20,000)
gifd               gifd, face-dcgan prior, convnet (half width), LFW 32 px      steps per stage (5 stages; 1000)
ggl                ggl (CMA-ES, population 50), face-dcgan prior, convnet, LFW  CMA-ES generations (800)
=================  ===========================================================  ===============================

For each point: mean PSNR ± 95 % t-interval over the batches, the no-leak reference (best of the public
constant, mean and random images), ``leakage_db`` = PSNR − reference with its interval, re-identification top-1
and seconds. The *knee* is the smallest budget whose mean leakage reaches ≥ 80 % of the leakage at the largest
budget measured (the gain over what an attacker has without the update); when the largest budget leaks nothing
measurable, the knee is taken on the PSNR gain over the smallest budget instead, and says so.

    python benchmarks/convergence.py --threads 1        # the budgets one core runs in ~30 min; lists the rest
    python benchmarks/convergence.py --full             # every point up to the papers' budgets (hours here)
    python benchmarks/convergence.py --cells ig --budgets 100,1000
    python benchmarks/convergence.py --smoke            # every path, two batches, tiny budgets
    python benchmarks/convergence.py --cells demo-gifd,demo-ig --restarts 2 \
        --csv benchmarks/results/convergence_demo.csv --plot benchmarks/results/convergence_demo.png
                                                        # the scenario and budget of `make demo`: ~5 min

Points left out at a size are printed with their estimated cost: the cell's measured milliseconds per gradient
evaluation × evaluations × batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from _stats import batch_indices, fmt_interval, run_cell, summarize
from _tables import parse_sized, sized_parser, write_csv

KNEE_SHARE = 0.8


@dataclass(frozen=True)
class Cell:
    """One attack in one fixed setting and the budgets to measure it at."""

    name: str
    overrides: tuple[str, ...]
    budget_key: str  # the attack keyword the budget sets
    dataset: str
    budgets: tuple[int, ...]  # log-spaced, ending at the paper's budget
    default_budgets: tuple[int, ...]  # what the default size runs
    evaluations_per_budget: int  # gradient evaluations per restart per budget unit
    axis: str

    def evaluations(self, budget: int, restarts: int) -> int:
        return budget * self.evaluations_per_budget * restarts


COMMON = ("batch_size=1", "image_size=32", "progress=false", "attack.compile=false")
FACE = ("prior=face-dcgan", "model=convnet", "model.width=0.5", "dataset=lfw")
CELLS: dict[str, Cell] = {
    "ig": Cell("ig", ("attack=inverting_gradients", "model=lenet-dlg", "dataset=photos"), "iterations", "photos",
               (100, 300, 1000, 3000, 10000, 24000), (100, 300, 1000, 3000, 10000), 1, "iterations"),
    "gradinversion": Cell("gradinversion", ("attack=gradinversion", "model=convnet", "model.width=0.5",
                                            "dataset=photos"), "iterations", "photos",
                          (100, 300, 1000, 3000, 10000, 20000), (100, 300, 1000, 3000), 1, "iterations"),
    "gifd": Cell("gifd", ("attack=gifd", *FACE), "steps_per_stage", "lfw", (10, 30, 100, 300, 1000),
                 (10, 30, 100, 300), 5, "steps per stage (× 5 stages)"),
    "ggl": Cell("ggl", ("attack=ggl", *FACE), "iterations", "lfw", (10, 30, 100, 300, 800), (10, 30, 100), 50,
                "CMA-ES generations (× 50 candidates)"),
    # the scenario of `make demo` (photos, 32 px, half-width ConvNet, face DCGAN; run these two with --restarts 2,
    # the demo's): does the demo's budget (GIFD 60 a stage, IG 300 steps) leak, for GIFD and for IG?
    "demo-gifd": Cell("demo-gifd", ("attack=gifd", "prior=face-dcgan", "model=convnet", "model.width=0.5",
                                    "dataset=photos", "dataset.unique_labels=true"), "steps_per_stage", "photos",
                      (20, 60, 200, 1000), (20, 60), 5, "steps per stage (× 5 stages)"),
    "demo-ig": Cell("demo-ig", ("attack=inverting_gradients", "model=convnet", "model.width=0.5", "dataset=photos",
                                "dataset.unique_labels=true"), "iterations", "photos",
                    (100, 300, 1000, 5000), (100, 300), 1, "iterations"),
}
SMOKE_BUDGETS = {"ig": (2, 4), "gradinversion": (2, 4), "gifd": (1, 2), "ggl": (1, 2), "demo-gifd": (1, 2),
                 "demo-ig": (2, 4)}
#: the cells a plain run measures (the demo's two are asked for by name)
DEFAULT_CELLS = ("ig", "gradinversion", "gifd", "ggl")


def knee(points: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The knee of one cell's measured points (sorted by budget): the smallest budget reaching ≥ 80 % of the
    leakage at the largest budget, or of the PSNR gain over the smallest budget when that leakage is ≤ 0."""
    if len(points) < 2:
        return None
    last = points[-1]
    if last["leakage_db"] > 0:
        target = KNEE_SHARE * last["leakage_db"]
        chosen = next(p for p in points if p["leakage_db"] >= target)
        return {"budget": chosen["budget"], "basis": "leakage", "value": chosen["leakage_db"],
                "target": target, "largest": last["budget"]}
    first = points[0]
    target = first["psnr_mean"] + KNEE_SHARE * (last["psnr_mean"] - first["psnr_mean"])
    chosen = next(p for p in points if p["psnr_mean"] >= target)
    return {"budget": chosen["budget"], "basis": "psnr gain over the smallest budget (no leak at the largest)",
            "value": chosen["psnr_mean"], "target": target, "largest": last["budget"]}


def cost_model(points: Sequence[dict[str, Any]], restarts: int) -> tuple[float | None, float]:
    """(marginal ms per gradient evaluation, fixed seconds per run) of one cell, from its two largest measured
    budgets (a run's fixed costs cancel in their difference); from the largest alone when that is all there is
    or the difference is not positive. (None, 0) without a measured point."""
    if not points:
        return None, 0.0
    ordered = sorted(points, key=lambda r: r["evaluations"])
    big = ordered[-1]
    big_evals = big["evaluations"] * restarts
    if len(ordered) >= 2:
        small = ordered[-2]
        extra = big_evals - small["evaluations"] * restarts
        slope = (big["seconds_mean"] - small["seconds_mean"]) / extra if extra > 0 else 0.0
        if slope > 0:
            return 1000 * slope, max(0.0, big["seconds_mean"] - slope * big_evals)
    return 1000 * big["seconds_mean"] / big_evals, 0.0


def plot(rows: Sequence[dict[str, Any]], path: str) -> str:
    """PSNR and leakage against gradient evaluations per restart, one line per cell; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, name in enumerate(sorted({r["cell"] for r in rows})):
        cell = sorted((r for r in rows if r["cell"] == name), key=lambda r: r["evaluations"])
        x = [r["evaluations"] for r in cell]
        colour = f"C{i}"
        left.errorbar(x, [r["psnr_mean"] for r in cell], yerr=[_finite(r["psnr_ci95"]) for r in cell], marker="o",
                      capsize=3, color=colour, label=name)
        left.plot(x, [r["reference_psnr"] for r in cell], linestyle="--", color=colour, alpha=0.6)
        right.errorbar(x, [r["leakage_db"] for r in cell], yerr=[_finite(r["leakage_ci95"]) for r in cell],
                       marker="o", capsize=3, color=colour, label=name)
    left.set(xscale="log", xlabel="gradient evaluations per restart", ylabel="PSNR (dB)",
             title="PSNR (dashed: no-leak reference)")
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set(xscale="log", xlabel="gradient evaluations per restart", ylabel="leakage (dB over the reference)",
              title="leakage_db, mean ± 95 % interval")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/convergence.csv",
                          full_help="every budget up to each paper's (hours on this machine)",
                          smoke_help="two batches, tiny budgets, every cell (numbers meaningless)")
    parser.add_argument("--cells", default=",".join(DEFAULT_CELLS),
                        help=f"comma-separated: {', '.join(CELLS)} (default: {', '.join(DEFAULT_CELLS)})")
    parser.add_argument("--batches", type=int, default=8, help="private batches per point (default 8)")
    parser.add_argument("--budgets", default=None, help="comma-separated budgets for every chosen cell")
    parser.add_argument("--restarts", type=int, default=1, help="attack.restarts for every cell (default 1)")
    parser.add_argument("--plot", default="benchmarks/results/convergence.png")
    parser.add_argument("--seed", type=int, default=0)
    args, size = parse_sized(parser)
    names = args.cells.split(",")
    unknown = [n for n in names if n not in CELLS]
    if unknown:
        raise SystemExit(f"error: unknown cell {unknown[0]!r}; known: {', '.join(CELLS)}")
    n_batches = 2 if size == "smoke" else args.batches

    rows: list[dict[str, Any]] = []
    left_out: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in names:
        cell = CELLS[name]
        if args.budgets:
            budgets = tuple(int(b) for b in args.budgets.split(","))
        else:
            budgets = SMOKE_BUDGETS[name] if size == "smoke" else cell.budgets if size == "full" \
                else cell.default_budgets
        layout = batch_indices(cell.dataset, n_batches=n_batches, per_batch=1, seed=args.seed)
        for budget in budgets:
            overrides = [*COMMON, *cell.overrides, f"attack.{cell.budget_key}={budget}",
                         f"attack.restarts={args.restarts}"]
            per_batch = run_cell(overrides, layout, seed=args.seed)
            summary = summarize(per_batch)
            evaluations = cell.evaluations(budget, args.restarts)
            seconds = sum(r["seconds"] for r in per_batch)
            row = {"cell": name, "budget": budget, "axis": cell.axis, "restarts": args.restarts,
                   "evaluations": cell.evaluations(budget, 1), **summary,
                   "ms_per_evaluation": 1000 * seconds / (evaluations * len(per_batch)), "status": "measured",
                   "estimated_seconds": None, "overrides": " ".join(overrides)}
            rows.append(row)
            print(f"[{time.perf_counter() - t0:6.0f}s] {name:<14} {cell.budget_key}={budget:<6}"
                  f" PSNR {fmt_interval(row['psnr_mean'], row['psnr_ci95'])}  reference {row['reference_psnr']:.2f}"
                  f"  leakage {fmt_interval(row['leakage_db'], row['leakage_ci95'])}"
                  f"  ({row['seconds_mean']:.1f} s a batch)", flush=True)
        rate, fixed = cost_model([r for r in rows if r["cell"] == name], args.restarts)
        for budget in () if size == "smoke" else cell.budgets:
            if budget in budgets:
                continue
            evaluations = cell.evaluations(budget, args.restarts)
            estimate = None if rate is None else (fixed + rate / 1000 * evaluations) * n_batches
            left_out.append({"cell": name, "budget": budget, "axis": cell.axis, "restarts": args.restarts,
                             "evaluations": cell.evaluations(budget, 1), "n_batches": n_batches,
                             "status": "left out", "ms_per_evaluation": rate, "estimated_seconds": estimate})

    print(f"\nConvergence: B = 1, labels inferred, {args.restarts} restart(s), {n_batches} private batches per point;"
          " PSNR and leakage in dB, mean ± 95 % t-interval")
    print(f"{'cell':<14} {'budget':>7} {'evals':>8} {'PSNR':>15} {'reference':>9} {'leakage':>15} {'reid':>5}"
          f" {'s/batch':>8}  verdict")
    knees = {}
    for name in names:
        points = sorted((r for r in rows if r["cell"] == name), key=lambda r: r["budget"])
        for r in points:
            print(f"{name:<14} {r['budget']:>7} {r['evaluations']:>8} {fmt_interval(r['psnr_mean'], r['psnr_ci95']):>15}"
                  f" {r['reference_psnr']:9.2f} {fmt_interval(r['leakage_db'], r['leakage_ci95']):>15}"
                  f" {r['reid_top1'] if r['reid_top1'] is None else format(r['reid_top1'], '.2f'):>5}"
                  f" {r['seconds_mean']:8.1f}  {r['verdict']}")
        knees[name] = knee(points)
    print("\nKnee (smallest budget with ≥ 80 % of the gain at the largest budget measured):")
    for name, k in knees.items():
        axis = CELLS[name].axis
        if k is None:
            print(f"  {name:<14} fewer than two budgets measured")
            continue
        note = " — the paper's budget was not measured, so the knee may move" if k["largest"] < CELLS[name].budgets[-1] \
            else ""
        print(f"  {name:<14} {axis} = {k['budget']} ({k['basis']}: {k['value']:.2f} dB ≥ target {k['target']:.2f};"
              f" largest measured {k['largest']}){note}")
        for r in rows:
            if r["cell"] == name:
                r["knee_budget"] = k["budget"]
                r["knee_basis"] = k["basis"]
    if left_out:
        print("\nLeft out at this size (--full runs them), with their estimated cost here"
              " (measured ms per gradient evaluation × evaluations × batches):")
        for r in left_out:
            cost = "n/a" if r["estimated_seconds"] is None else f"{r['estimated_seconds'] / 60:.0f} min"
            print(f"  {r['cell']:<14} {r['axis']} = {r['budget']}: {r['evaluations'] * args.restarts} evaluations a"
                  f" batch × {n_batches} batches at {r['ms_per_evaluation'] or float('nan'):.1f} ms ≈ {cost}")
    if size != "full":
        print("left out at this size: the budgets above; restarts > 1 (--restarts); batch sizes > 1")
    fields = ["cell", "budget", "axis", "restarts", "evaluations", "status", "n_batches", "psnr_mean", "psnr_ci95",
              "ssim_mean", "reference_psnr", "leakage_db", "leakage_ci95", "reid_top1", "label_accuracy",
              "seconds_mean", "ms_per_evaluation", "estimated_seconds", "verdict", "knee_budget", "knee_basis",
              "overrides"]
    if args.csv:
        print(f"\nwrote {write_csv([*rows, *left_out], args.csv, fields)}")
    if args.plot and rows:
        print(f"wrote {plot(rows, args.plot)}")


if __name__ == "__main__":
    main()
