"""GIFD's ``attack.carry``: does a stage hand on its best iterate or its final one? A paired comparison.

``carry=best`` records, per stage and restart, the least-distance iterate (the stage's own start included) and
starts the next stage from it; ``carry=final`` records and hands on the final iterate, as the official code
does. Both run on the very same private batches, victims and starting latents, so the per-batch difference
``best − final`` removes the spread between batches.

Setting (what a user of the face preset runs, at 32 px): the face DCGAN prior, a ConvNet victim (half width,
random initialisation, eval mode, 10 classes), FedSGD, B = 1 LFW face per batch (distinct faces, seeded; grey
as LFW is, so the prior's colour images reach the victim in grey), labels inferred (iDLG), GIFD's default
stage schedule (latent + four feature stages, relative radii), built through ``fedinvert.runner.build_scenario``
as the CLI builds it. Each batch k has its own seed (victim
initialisation and latents). Scores are what ``metrics.json`` reports (``fedinvert.runner.evaluate_run``): after
Hungarian matching, with the no-leak reference of each batch (the best of the constant / mean / random-image
guesses from the other LFW faces), ``leakage_db`` and ``reid_top1`` (99 distractors, chance 1 %).

    python benchmarks/gifd_carry.py            # 10 batches, 32 px, 60 steps a stage × 2 restarts: 848 s, 1 core
    python benchmarks/gifd_carry.py --full     # 16 batches, 64 px, 1000 steps × 4 restarts (official budget; GPU)
    python benchmarks/gifd_carry.py --smoke    # 2 batches, 16 px, 3 steps (numbers meaningless)
"""

from __future__ import annotations

import time
from typing import Any

import torch
from _stats import SUMMARY_FIELDS, batch_indices, fmt_interval, paired, summarize
from _tables import parse_sized, sized_parser, write_csv

from fedinvert.attacks import ATTACKS
from fedinvert.config import resolve_config
from fedinvert.errors import FedinvertError
from fedinvert.priors import PRIORS
from fedinvert.runner import build_scenario, evaluate_run

CARRIES = ("best", "final")
SIZES = {  # size -> (batches, image px, steps a stage, restarts)
    "smoke": (2, 16, 3, 1),
    "default": (10, 32, 60, 2),
    "full": (16, 64, 1000, 4),
}
FIELDS = ("batch", "seed", "indices", "carry", "psnr", "ssim", "reference_psnr", "reference_kind", "leakage_db",
          "reid_top1", "st_lpips", "stage", "distance", "stage_distances", "stage_leakage_db", "label_accuracy",
          "seconds", "evaluations")


def run_batch(prior: Any, indices: list[int], seed: int, *, image_size: int, steps: int, restarts: int,
              carry: str) -> dict[str, Any]:
    """One GIFD run on one private batch; the row of ``FIELDS`` (without the batch keys)."""
    cfg = resolve_config(["model=convnet", "model.width=0.5", "dataset=lfw", f"image_size={image_size}",
                          f"dataset.indices={indices}", f"seed={seed}", "prior=face-dcgan"])
    scenario = build_scenario(cfg)
    attack = ATTACKS.build("gifd", prior=prior, steps_per_stage=steps, restarts=restarts, carry=carry,
                           compile=False, device="cpu", log_every=steps)
    started = time.perf_counter()
    rec = attack.reconstruct(scenario.observation, rng=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - started
    m = evaluate_run(scenario, rec, settings=cfg.get("metrics"))
    return {
        "carry": carry,
        "psnr": m["psnr"],
        "ssim": m["ssim"],
        "reference_psnr": m["reference"]["psnr"],
        "reference_kind": m["reference"]["best"],
        "leakage_db": m["leakage_db"],
        "reid_top1": m["reid_top1"],
        "st_lpips": m["st_lpips"],
        "stage": rec.extras["stage"],
        "distance": rec.score,
        "stage_distances": " ".join(f"{s.distance:.5g}" for s in rec.stages),
        "stage_leakage_db": " ".join(f"{s['leakage_db']:.2f}" for s in m["stages"]),
        "label_accuracy": m["label_accuracy"],
        "seconds": seconds,
        "evaluations": rec.iterations,
    }


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/gifd_carry.csv",
                          full_help="16 batches, 64 px, the official 1000 steps × 4 restarts (GPU-sized)",
                          smoke_help="2 batches, tiny budget, every path")
    parser.add_argument("--batches", type=int, default=None, help="number of private batches (≥ 8 for a verdict)")
    parser.add_argument("--seed", type=int, default=0)
    args, size = parse_sized(parser)
    n_batches, image_size, steps, restarts = SIZES[size]
    n_batches = args.batches or n_batches
    try:
        prior = PRIORS.build("face-dcgan")
    except FedinvertError as err:
        raise SystemExit(f"gifd_carry needs the face-dcgan prior: {err}") from None
    layout = batch_indices("lfw", n_batches=n_batches, per_batch=1, seed=args.seed)
    print(f"GIFD carry=best vs carry=final: {n_batches} LFW faces (B = 1), {image_size} px, ConvNet ×0.5 (eval),"
          f" labels inferred, face-dcgan, 5 stages × {steps} steps × {restarts} restarts", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in CARRIES}
    t0 = time.perf_counter()
    for k, indices in enumerate(layout):
        seed = args.seed + k
        for carry in CARRIES:
            row = {"batch": k, "seed": seed, "indices": " ".join(map(str, indices))}
            row.update(run_batch(prior, indices, seed, image_size=image_size, steps=steps, restarts=restarts,
                                 carry=carry))
            rows[carry].append(row)
            print(f"[{time.perf_counter() - t0:6.0f}s] batch {k:2d} face {indices[0]:3d} carry={carry:<5}"
                  f" psnr={row['psnr']:6.2f} ref={row['reference_psnr']:6.2f} ({row['reference_kind']})"
                  f" reid={row['reid_top1']:.0f}"
                  f" stage={row['stage']:<3} distance={row['distance']:.4g} [{row['stage_distances']}]"
                  f" {row['seconds']:.0f}s", flush=True)

    print("\nPer batch (PSNR dB; reference = no-leak reference of the batch; diff = best − final)")
    print(f"{'batch':>5} {'face':>4} {'ref':>6} {'best':>6} {'stage':>5} {'final':>6} {'stage':>5} {'diff':>6}")
    for best, final in zip(rows["best"], rows["final"], strict=True):
        print(f"{best['batch']:5d} {best['indices']:>4} {best['reference_psnr']:6.2f} {best['psnr']:6.2f}"
              f" {best['stage']:>5} {final['psnr']:6.2f} {final['stage']:>5} {best['psnr'] - final['psnr']:+6.2f}")
    print("\nCell means ± 95 % t-interval over the batches:")
    cells = []
    for carry in CARRIES:
        cell = {"carry": carry, **summarize(rows[carry])}
        cells.append(cell)
        print(f"  carry={carry:<5} PSNR {fmt_interval(cell['psnr_mean'], cell['psnr_ci95'])} dB, reference"
              f" {cell['reference_psnr']:.2f} dB, leakage {fmt_interval(cell['leakage_db'], cell['leakage_ci95'])}"
              f" dB ({cell['verdict']}), reid_top1 {cell['reid_top1']:.2f}")
    summary = []
    for key in ("psnr", "distance"):
        diff = paired(rows["best"], rows["final"], key=key)
        summary.append(diff)
        verdict = "interval excludes 0" if diff["excludes_zero"] else "no difference measured"
        print(f"  paired best − final, {key}: {fmt_interval(diff['diff_mean'], diff['diff_ci95'], '.4g')}"
              f" [{diff['diff_low']:.4g}, {diff['diff_high']:.4g}] over {diff['n_batches']} batches: {verdict}")
    stage_changes = sum(b["stage"] != f["stage"] for b, f in zip(rows["best"], rows["final"], strict=True))
    print(f"  chosen stage differs on {stage_changes} of {n_batches} batches")
    if args.csv:
        path = write_csv([*rows["best"], *rows["final"]], args.csv, FIELDS)
        cells_path = write_csv(cells, path.with_name(path.stem + "_cells.csv"), ["carry", *SUMMARY_FIELDS])
        summary_path = write_csv(summary, path.with_name(path.stem + "_paired.csv"))
        print(f"\nwrote {path}, {cells_path} and {summary_path}")
    if size != "full":
        print(f"left out at this size (--full runs them): 64 px (here {image_size} px), the official 1000 steps ×"
              " 4 restarts a stage, 16 batches")


if __name__ == "__main__":
    main()
