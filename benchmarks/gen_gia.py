"""Generation-based attacks side by side: GIFD and its ablations, GGL, GIAS, and Inverting Gradients.

Every attack inverts the FedSGD gradient of a ReLU ConvNet (half width, random initialisation, eval mode,
10 classes) with inferred labels, through the runner, with the face DCGAN bundled in gan-face-generate as the
prior, on two kinds of private images:

* ``lfw``: real LFW faces as RGB (near the prior's domain: other faces, other cameras);
* ``photos``: the bundled colour photos (astronaut, cat, coffee, rocket, ...; out of distribution).

Each cell (setting × batch size B × attack) runs on ``--batches`` private batches (default 8) of distinct,
seeded images, the same batches for every attack; each batch has its own victim initialisation and attack
seed. A cell reports the mean and 95 % t-interval over its batches of PSNR and of the leakage (PSNR above
the no-leak reference of the same batch: the best of a constant image, the mean image and random images of
the public data), the reference itself and re-identification top-1; then paired differences between attacks
on the same batches. The 11 photos hold 8 disjoint batches only at B = 1, so photos run at B = 1 only. The
in-distribution upper bound (private images the prior can generate) is ``id-fashion`` in
``benchmarks/ood.py``.

    python benchmarks/gen_gia.py           # 32 px; GIFD, GIFD-z, IG on LFW B = 4 and photos B = 1, GGL on
                                           # photos B = 1: ~30 min on 1 core
    python benchmarks/gen_gia.py --full    # 64 px, all seven attacks, LFW at B = 1 and 4, photos at B = 1,
                                           # the official budgets (GIFD 1,000 steps × 4 restarts); GPU-sized
    python benchmarks/gen_gia.py --smoke   # every attack and path, 2 batches, tiny budgets (numbers meaningless)

Writes the cell table (``--csv``), the paired differences (``*_paired.csv``) and every batch's scores
(``*_batches.csv``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from _stats import PAIRED_FIELDS, batch_indices, pair_label, paired, run_cell, summarize
from _tables import companion, parse_sized, print_cells, print_pairs, sized_parser, write_csv

from fedinvert.errors import FedinvertError
from fedinvert.priors import PRIORS

ALL_ATTACKS = ("gifd", "gifd-z", "gifd-f", "gifd-e", "ggl", "gias", "inverting_gradients")
PRIOR = "face-dcgan"

#: attack -> (overrides, the budget in words) per size. DEFAULT_BUDGETS gives every attack 1,000 gradient
#: evaluations per private batch: each attack's knee in benchmarks/results/convergence.csv or above it
#: (IG's knee is 1,000; GIFD's, 300 a stage, is out of reach at 1,000 evaluations, so 100 a stage).
DEFAULT_BUDGETS: dict[str, tuple[list[str], str]] = {
    "gifd": (["attack.steps_per_stage=100", "attack.restarts=2"], "5 stages × 100 × 2"),
    "gifd-z": (["attack.steps_per_stage=500", "attack.restarts=2"], "500 × 2"),
    "gifd-f": (["attack.steps_per_stage=100", "attack.restarts=2"], "5 stages × 100 × 2"),
    "gifd-e": (["attack.steps_per_stage=100", "attack.restarts=2"], "5 stages × 100 × 2"),
    "ggl": (["attack.iterations=100", "attack.population=10"], "CMA-ES 100 × 10"),
    "gias": (["attack.latent_steps=170", "attack.finetune_steps=330", "attack.restarts=2"], "(170 + 330) × 2"),
    "inverting_gradients": (["attack.iterations=1000", "attack.restarts=1"], "1000 × 1"),
}
#: the papers' budgets
FULL_BUDGETS: dict[str, tuple[list[str], str]] = {
    "gifd": (["attack.steps_per_stage=1000", "attack.restarts=4"], "5 stages × 1000 × 4"),
    "gifd-z": (["attack.steps_per_stage=1000", "attack.restarts=4"], "1000 × 4"),
    "gifd-f": (["attack.steps_per_stage=1000", "attack.restarts=4"], "5 stages × 1000 × 4"),
    "gifd-e": (["attack.steps_per_stage=1000", "attack.restarts=4"], "5 stages × 1000 × 4"),
    "ggl": (["attack.iterations=800", "attack.population=50"], "CMA-ES 800 × 50"),
    "gias": (["attack.latent_steps=1000", "attack.finetune_steps=8000", "attack.restarts=4"], "(1000 + 8000) × 4"),
    "inverting_gradients": (["attack.iterations=4800", "attack.restarts=4"], "4800 × 4"),
}
SMOKE_BUDGETS: dict[str, tuple[list[str], str]] = {
    "gifd": (["attack.steps_per_stage=2", "attack.restarts=1"], "smoke"),
    "gifd-z": (["attack.steps_per_stage=2", "attack.restarts=1"], "smoke"),
    "gifd-f": (["attack.steps_per_stage=2", "attack.restarts=1"], "smoke"),
    "gifd-e": (["attack.steps_per_stage=2", "attack.restarts=1"], "smoke"),
    "ggl": (["attack.iterations=2", "attack.population=4"], "smoke"),
    "gias": (["attack.latent_steps=2", "attack.finetune_steps=2", "attack.restarts=1"], "smoke"),
    "inverting_gradients": (["attack.iterations=2", "attack.restarts=1"], "smoke"),
}
BUDGETS = {"default": DEFAULT_BUDGETS, "full": FULL_BUDGETS, "smoke": SMOKE_BUDGETS}
IMAGE_SIZE = {"default": 32, "full": 64, "smoke": 16}
BATCHES = {"default": 8, "full": 8, "smoke": 2}

#: setting -> (data set, its overrides)
SETTINGS: dict[str, tuple[str, list[str]]] = {"lfw": ("lfw", ["dataset=lfw", "channels=3"]),
                                              "photos": ("photos", ["dataset=photos"])}
#: paired differences reported (a − b), where both cells ran
PAIRS = (("gifd", "inverting_gradients"), ("gifd", "gifd-z"), ("gifd", "ggl"), ("gifd", "gias"),
         ("gifd", "gifd-f"), ("gifd-f", "gifd-e"))


@dataclass(frozen=True)
class Cell:
    setting: str
    batch_size: int
    attacks: tuple[str, ...]


GRIDS: dict[str, list[Cell]] = {
    "default": [Cell("lfw", 4, ("gifd", "gifd-z", "inverting_gradients")),
                Cell("photos", 1, ("gifd", "gifd-z", "ggl", "inverting_gradients"))],
    "full": [Cell("lfw", 1, ALL_ATTACKS), Cell("lfw", 4, ALL_ATTACKS), Cell("photos", 1, ALL_ATTACKS)],
    "smoke": [Cell("lfw", 2, ALL_ATTACKS), Cell("photos", 1, ("gifd", "inverting_gradients"))],
}


def left_out(size: str) -> list[str]:
    """What the chosen size does not run that ``--full`` does."""
    if size == "smoke":
        return ["all but a few cells at tiny budgets and 16 px: the numbers are meaningless"]
    if size == "full":
        return ["photos at B = 4 (the 11 photos hold fewer than 8 disjoint batches of 4)"]
    have = {(c.setting, c.batch_size, a) for c in GRIDS[size] for a in c.attacks}
    out = []
    for cell in GRIDS["full"]:
        missing = [a for a in cell.attacks if (cell.setting, cell.batch_size, a) not in have]
        if missing:
            what = "every attack" if len(missing) == len(cell.attacks) else ", ".join(missing)
            out.append(f"{cell.setting} B = {cell.batch_size}: {what}")
    out.append(f"{IMAGE_SIZE[size]} px instead of 64; budgets as in the table instead of the papers' (GIFD 1,000"
               " steps × 4 restarts a stage, GGL CMA-ES 800 × 50, GIAS (1,000 + 8,000) × 4, IG 4,800 × 4)")
    return out


def overrides(setting: str, batch_size: int, image_size: int, attack: str, budget: list[str]) -> list[str]:
    return [*SETTINGS[setting][1], "dataset.unique_labels=true", f"batch_size={batch_size}", f"image_size={image_size}",
            "model=convnet", "model.width=0.5", f"prior={PRIOR}", f"attack={attack}", *budget,
            "attack.compile=false", "progress=false", "device=cpu"]


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/gen_gia.csv",
                          full_help="64 px, all seven attacks on LFW B = 1, 4 and photos B = 1, official budgets",
                          smoke_help="every attack and path on 2 batches with tiny budgets")
    parser.add_argument("--batches", type=int, default=None, help="private batches per cell (default 8; smoke 2)")
    parser.add_argument("--settings", default=None, help=f"comma-separated subset of {', '.join(SETTINGS)}")
    parser.add_argument("--attacks", default=None, help="comma-separated subset of the size's attacks")
    parser.add_argument("--seed", type=int, default=0, help="seeds the batch layout; batch k runs with seed+k")
    args, size = parse_sized(parser)
    n_batches = args.batches or BATCHES[size]
    image_size, plan = IMAGE_SIZE[size], BUDGETS[size]
    settings = args.settings.split(",") if args.settings else list(SETTINGS)
    only = set(args.attacks.split(",")) if args.attacks else None
    grid = [Cell(c.setting, c.batch_size, tuple(a for a in c.attacks if only is None or a in only))
            for c in GRIDS[size] if c.setting in settings]
    try:
        PRIORS.build(PRIOR)
    except FedinvertError as err:
        raise SystemExit(f"gen_gia needs the {PRIOR} prior: {err}") from None
    # batch k of a setting is the same images for every attack; smaller B are prefixes of the largest B's
    stride = {s: max(c.batch_size for c in grid if c.setting == s) for s in {c.setting for c in grid}}

    cells: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    print(f"gen_gia '{size}': {sum(len(c.attacks) for c in grid)} cells × {n_batches} batches, {image_size} px,"
          f" {args.threads} thread(s)", flush=True)
    for cell in grid:
        layout = batch_indices(SETTINGS[cell.setting][0], n_batches=n_batches, per_batch=cell.batch_size, seed=args.seed,
                               unique_labels=True, stride=stride[cell.setting])
        for name in cell.attacks:
            budget_overrides, budget = plan[name]
            labels = {"setting": cell.setting, "B": cell.batch_size, "attack": name, "budget": budget}

            def progress(row: dict[str, Any], labels: dict[str, Any] = labels) -> None:
                print(f"[{time.perf_counter() - t0:6.0f}s] {labels['setting']:<6} B={labels['B']}"
                      f" {labels['attack']:<20} batch {row['batch'] + 1}/{n_batches}: psnr {row['psnr']:.2f}"
                      f" (reference {row['reference_psnr']:.2f}, leak {row['leakage_db']:+.2f})"
                      f" {row['seconds']:.0f}s", flush=True)

            try:
                rows = run_cell(overrides(cell.setting, cell.batch_size, image_size, name, budget_overrides),
                                layout, seed=args.seed, on_batch=progress)
            except FedinvertError as err:
                cells.append({**labels, "note": f"error: {err}"})
                print(f"{cell.setting} B={cell.batch_size} {name}: error: {err}", flush=True)
                continue
            results[(cell.setting, cell.batch_size, name)] = rows
            cells.append({**labels, **summarize(rows)})
            raw.extend({**labels, **r} for r in rows)

    pairs = []
    for cell in grid:
        for a, b in PAIRS:
            ra, rb = results.get((cell.setting, cell.batch_size, a)), results.get((cell.setting, cell.batch_size, b))
            if ra and rb:
                pairs.append({"setting": cell.setting, "B": cell.batch_size, "difference": pair_label(a, b),
                              **paired(ra, rb)})

    print(f"\nGeneration-based attacks, {image_size} px, ConvNet (half width, eval), labels inferred, {PRIOR}"
          f" prior; mean ± 95 % interval over {n_batches} private batches; ref = no-leak reference PSNR")
    print_cells(cells, ("setting", "B", "attack", "budget"))
    if pairs:
        print("\nPaired differences in PSNR on the same batches (a − b)")
        print_pairs(pairs, ("setting", "B"))
    if args.csv and cells:
        print(f"\nwrote {write_csv(cells, args.csv, CELL_FIELDS, digits=4)}, {write_csv(pairs, companion(args.csv, 'paired'), PAIR_FIELDS, digits=4)}"
              f" and {write_csv(raw, companion(args.csv, 'batches'), digits=4)}")
    print(f"{time.perf_counter() - t0:.0f} s in all")
    lines = left_out(size)
    if lines:
        print("left out at this size (--full runs them):" if size != "full" else "left out:")
        for line in lines:
            print(f"  - {line}")


CELL_FIELDS = ["setting", "B", "attack", "budget", "n_batches", "psnr_mean", "psnr_ci95", "ssim_mean",
               "reference_psnr", "leakage_db", "leakage_ci95", "reid_top1", "st_lpips", "label_accuracy",
               "seconds_mean", "verdict", "note"]
PAIR_FIELDS = ["setting", "B", "difference", *PAIRED_FIELDS]


if __name__ == "__main__":
    main()
