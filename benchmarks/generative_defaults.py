"""A paired sweep of the generation-based attacks' keywords at the budget users run here (1000 gradient
evaluations a private batch, as in ``gen_gia.yaml``): are the papers' defaults the best choice there?

Every candidate attacks the same private batches as ``gen_gia.yaml``'s photos cell (8 bundled photos, B = 1,
32 px, half-width ReLU ConvNet, labels inferred, face DCGAN prior; ``--setting lfw --batch-size 4`` for its LFW
cell), through the runner. Printed per candidate:
PSNR and leakage over the no-leak reference (mean ± 95 % interval over the batches) and the paired difference
to the attack's current defaults on the same batches. A default is changed only where a candidate's paired
interval excludes zero.

    python benchmarks/generative_defaults.py                 # GIFD, GIFD-z, GGL, GIAS: ~35 min on 1 core
    python benchmarks/generative_defaults.py --attacks ggl   # one attack
    python benchmarks/generative_defaults.py --attacks gifd --candidates defaults,lr=0.3 --setting lfw --batch-size 4
                                                             # a candidate re-checked on gen_gia's LFW B = 4 cell
    python benchmarks/generative_defaults.py --smoke         # every path, 2 batches, tiny budgets
"""

from __future__ import annotations

import time
from typing import Any

from _stats import batch_indices, paired, run_cell, summarize
from _tables import companion, parse_sized, print_cells, print_pairs, sized_parser, write_csv

PRIOR = "face-dcgan"
#: attack -> (overrides, the budget in words): 1,000 gradient evaluations a private batch (benchmarks/gen_gia.yaml)
DEFAULT_BUDGETS: dict[str, tuple[list[str], str]] = {
    "gifd": (["attack.steps_per_stage=100", "attack.restarts=2"], "5 stages × 100 × 2"),
    "gifd-z": (["attack.steps_per_stage=500", "attack.restarts=2"], "500 × 2"),
    "ggl": (["attack.iterations=100", "attack.population=10"], "CMA-ES 100 × 10"),
    "gias": (["attack.latent_steps=170", "attack.finetune_steps=330", "attack.restarts=2"], "(170 + 330) × 2"),
}
SMOKE_BUDGETS: dict[str, tuple[list[str], str]] = {
    "gifd": (["attack.steps_per_stage=2", "attack.restarts=1"], "smoke"),
    "gifd-z": (["attack.steps_per_stage=2", "attack.restarts=1"], "smoke"),
    "ggl": (["attack.iterations=2", "attack.population=4"], "smoke"),
    "gias": (["attack.latent_steps=2", "attack.finetune_steps=2", "attack.restarts=1"], "smoke"),
}
SETTINGS = {"lfw": ["dataset=lfw", "channels=3"], "photos": ["dataset=photos"]}


def overrides(setting: str, batch_size: int, image_size: int, attack: str, budget: list[str]) -> list[str]:
    """The keys of benchmarks/gen_gia.yaml's cell ``setting`` (lfw or photos) for ``attack`` at ``budget``."""
    return [*SETTINGS[setting], "dataset.unique_labels=true", f"batch_size={batch_size}", f"image_size={image_size}",
            "model=convnet", "model.width=0.5", f"prior={PRIOR}", f"attack={attack}", *budget,
            "attack.compile=false", "progress=false", "device=cpu"]

#: attack -> candidate name -> keyword overrides ("defaults" = the attack's own defaults)
CANDIDATES: dict[str, dict[str, list[str]]] = {
    "gifd": {"defaults": [], "lr=0.03": ["attack.lr=0.03"], "lr=0.3": ["attack.lr=0.3"]},
    "gifd-z": {"defaults": [], "lr=0.3": ["attack.lr=0.3"]},
    "ggl": {"defaults": [], "sigma=0.5": ["attack.sigma=0.5"], "kld=0": ["attack.kld=0.0"]},
    "gias": {"defaults": [], "lr=0.1": ["attack.lr=0.1"], "finetune_lr=0.01": ["attack.finetune_lr=0.01"]},
}


def setting_overrides(setting: str, batch_size: int, image_size: int, attack: str, budget: list[str]) -> list[str]:
    """gen_gia's overrides for ``setting``; id-fashion swaps in Fashion-MNIST's test split and the fashion prior."""
    if setting != "id-fashion":
        return overrides(setting, batch_size, image_size, attack, budget)
    return [*overrides("photos", batch_size, image_size, attack, budget), "dataset=fashion-mnist", "dataset.split=test",
            "channels=1", "prior=fashion"]


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/generative_defaults.csv",
                          full_help="the same candidates on 16 batches", smoke_help="2 batches, tiny budgets")
    parser.add_argument("--attacks", default=",".join(CANDIDATES), help="comma-separated subset of gifd, gifd-z, ggl, gias")
    parser.add_argument("--candidates", default=None, help="comma-separated subset of the candidates (with defaults)")
    parser.add_argument("--setting", default="photos", choices=("photos", "lfw", "id-fashion"),
                        help="gen_gia's setting, or id-fashion (Fashion-MNIST test images, our fashion prior)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per private batch")
    parser.add_argument("--seed", type=int, default=0, help="seeds the batch layout; batch k runs with seed+k")
    args, size = parse_sized(parser)
    only = set(args.candidates.split(",")) | {"defaults"} if args.candidates else None
    n_batches = {"default": 8, "full": 16, "smoke": 2}[size]
    image_size = 16 if size == "smoke" else 32
    plan = SMOKE_BUDGETS if size == "smoke" else DEFAULT_BUDGETS
    dataset, split = ("fashion-mnist", "test") if args.setting == "id-fashion" else (args.setting, None)
    layout = batch_indices(dataset, split=split, n_batches=n_batches, per_batch=args.batch_size, seed=args.seed,
                           unique_labels=True)
    cells: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for attack in args.attacks.split(","):
        if attack not in CANDIDATES:
            raise SystemExit(f"unknown attack {attack!r}; choose from {', '.join(CANDIDATES)}")
        budget_overrides, budget = plan[attack]
        rows_of: dict[str, list[dict[str, Any]]] = {}
        for name, extra in CANDIDATES[attack].items():
            if only is not None and name not in only:
                continue
            labels = {"attack": attack, "candidate": name, "budget": budget}
            rows = run_cell([*setting_overrides(args.setting, args.batch_size, image_size, attack, budget_overrides),
                             *extra], layout, seed=args.seed)
            rows_of[name] = rows
            cells.append({**labels, **summarize(rows)})
            raw.extend({**labels, **r} for r in rows)
            print(f"[{time.perf_counter() - t0:6.0f}s] {attack:<5} {name:<18} psnr {cells[-1]['psnr_mean']:.2f}"
                  f" ± {cells[-1]['psnr_ci95']:.2f} (leak {cells[-1]['leakage_db']:+.2f})", flush=True)
            if name != "defaults":
                pairs.append({"attack": attack, "difference": f"{name} − defaults", **paired(rows, rows_of["defaults"])})
    prior = "fashion" if args.setting == "id-fashion" else "face-dcgan"
    print(f"\nGeneration-based attacks' keywords, {args.setting} B = {args.batch_size}, {image_size} px, {prior} prior;"
          " mean ± 95 % over"
          f" {n_batches} private batches; ref = no-leak reference PSNR")
    print_cells(cells, ("attack", "candidate", "budget"))
    print("\nPaired differences in PSNR on the same batches (a − b)")
    print_pairs(pairs, ("attack",))
    if args.csv:
        print(f"\nwrote {write_csv(cells, args.csv, digits=4)}, {write_csv(pairs, companion(args.csv, 'paired'), digits=4)}"
              f" and {write_csv(raw, companion(args.csv, 'batches'), digits=4)}")
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
