"""In distribution, out of distribution, and label mapping (GIFD's journal extension).

Part 1 — GIFD vs GIFD-z vs GGL vs Inverting Gradients in each setting shipped as a preset:

* ``id-fashion``: Fashion-MNIST test images, our class-conditional ``fashion`` prior (in distribution);
* ``ood-face-lfw``: the face DCGAN on real LFW faces; ``ood-face-photos``: the face DCGAN on colour photos;
* ``ood-fashion-digits``: the fashion prior on handwritten digits; ``ood-fashion-photos``: on grey photo crops.

Part 2 — label mapping: Fashion-MNIST test images whose FL task numbers the ten classes differently
(``permuted``) or groups them into five (``grouped``); GIFD with ``attack.label_mapping`` off and on, and the
mapping accuracy (the share of reconstructions whose generator label is the private image's true class, after
matching), averaged over several private batches (``--mapping-batches``). The coarse pass has the official
100 steps a stage.

Every run goes through the runner with the preset plus budget overrides; labels are inferred; ReLU ConvNet
victim at half width; seconds are the attack's own time.

    python benchmarks/ood.py           # 32 px, ~600 gradient evaluations per attack: ~20 min on 1 core
    python benchmarks/ood.py --full    # the official budgets (1,000 steps × 4 restarts; 100 coarse); GPU-sized
    python benchmarks/ood.py --smoke   # every path, tiny budgets (numbers meaningless)
"""

from __future__ import annotations

import time
from typing import Any

from _tables import fmt, parse_sized, sized_parser, write_csv

from fedinvert.config import resolve_config
from fedinvert.data import load_batch
from fedinvert.errors import FedinvertError
from fedinvert.runner import run

SETTINGS = ("id-fashion", "ood-face-lfw", "ood-face-photos", "ood-fashion-digits", "ood-fashion-photos")
ATTACKS = ("gifd", "gifd-z", "ggl", "inverting_gradients")
#: FL label of Fashion-MNIST class c
LABEL_MAPS = {"permuted": [3, 7, 1, 9, 0, 5, 2, 8, 6, 4], "grouped": [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]}


def budgets(size: str) -> dict[str, tuple[list[str], str]]:
    """attack -> (overrides, the budget in words)."""
    if size == "smoke":
        return {
            "gifd": (["attack.steps_per_stage=2", "attack.restarts=1", "attack.coarse_steps=2",
                      "attack.remapper_samples=200", "attack.remapper_epochs=1"], "smoke"),
            "gifd-z": (["attack.steps_per_stage=2", "attack.restarts=1"], "smoke"),
            "ggl": (["attack.iterations=2", "attack.population=4"], "smoke"),
            "inverting_gradients": (["attack.iterations=2", "attack.restarts=1"], "smoke"),
        }
    if size == "full":
        return {
            "gifd": (["attack.steps_per_stage=1000", "attack.restarts=4", "attack.coarse_steps=100"],
                     "stages × 1000 × 4"),
            "gifd-z": (["attack.steps_per_stage=1000", "attack.restarts=4"], "1000 × 4"),
            "ggl": (["attack.iterations=800", "attack.population=50"], "CMA-ES 800 × 50"),
            "inverting_gradients": (["attack.iterations=4800", "attack.restarts=4"], "4800 × 4"),
        }
    return {
        "gifd": (["attack.steps_per_stage=60", "attack.restarts=2", "attack.coarse_steps=100"],
                 "stages × 60 × 2"),
        "gifd-z": (["attack.steps_per_stage=300", "attack.restarts=2"], "300 × 2"),
        "ggl": (["attack.iterations=60", "attack.population=10"], "CMA-ES 60 × 10"),
        "inverting_gradients": (["attack.iterations=300", "attack.restarts=2"], "300 × 2"),
    }


def common(batch: int, image_size: int, seed: int) -> list[str]:
    return [f"batch_size={batch}", f"image_size={image_size}", f"seed={seed}", "dataset.unique_labels=true",
            "attack.compile=false", "progress=false", "device=cpu"]


def attack_overrides(name: str, plan: dict[str, tuple[list[str], str]]) -> tuple[list[str], str]:
    overrides, budget = plan[name]
    if name != "gifd":  # coarse/remapper keys belong to GIFD's label mapping only
        return [f"attack={name}", *overrides], budget
    return ["attack=gifd", *[o for o in overrides if "coarse" not in o and "remapper" not in o]], budget


def run_row(overrides: list[str]) -> dict[str, Any]:
    try:
        result = run(resolve_config(overrides), write=False)
    except FedinvertError as err:
        return {"psnr": None, "ssim": None, "label_accuracy": None, "seconds": None, "note": f"error: {err}"}
    m = result.metrics
    return {"psnr": m["psnr"], "ssim": m["ssim"], "label_accuracy": m["label_accuracy"], "seconds": m["seconds"],
            "note": "", "result": result}


def mean_of(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each score over the runs of one cell (None if any run failed)."""
    keys = ("psnr", "ssim", "label_accuracy", "seconds")
    if any(c[k] is None for c in cells for k in keys):
        return {k: None for k in keys}
    return {k: sum(c[k] for c in cells) / len(cells) for k in keys}


def mapping_accuracy(result: Any, batch: int, image_size: int, seed: int) -> float | None:
    """Share of private images whose matched reconstruction was generated under their true Fashion class."""
    mapping = result.reconstruction.extras.get("label_mapping")
    order = result.metrics.get("order")
    if not mapping or "mapped_labels" not in mapping or order is None:
        return None
    original = load_batch("fashion-mnist", batch_size=batch, split="test", image_size=image_size, channels=1,
                          seed=seed, unique_labels=True).labels
    mapped = mapping["mapped_labels"]
    return sum(int(mapped[order[i]] == int(original[i])) for i in range(batch)) / batch


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/ood.csv", full_help="official budgets (GPU-sized)",
                          smoke_help="tiny budgets, every path")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--parts", default="settings,mapping", help="comma-separated: settings, mapping")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--mapping-batches", type=int, default=6,
                        help="private batches per label-mapping cell at B = 1 (half as many at B > 1)")
    parser.add_argument("--seed", type=int, default=0)
    args, size = parse_sized(parser)
    image_size = 16 if args.smoke else 32
    plan = budgets(size)
    batches = [int(b) for b in args.batches.split(",")]
    parts = args.parts.split(",")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def record(row: dict[str, Any]) -> None:
        row.pop("result", None)
        rows.append(row)
        print(f"[{time.perf_counter() - t0:6.0f}s] {row['part']:<8} {row['setting']:<19} B={row['B']} "
              f"{row['attack']:<24} psnr={fmt(row['psnr'], '.2f')} {row['note']}", flush=True)

    if "settings" in parts:
        for setting in args.settings.split(","):
            for batch in batches:
                for name in ATTACKS:
                    overrides, budget = attack_overrides(name, plan)
                    row = {"part": "setting", "setting": setting, "B": batch, "attack": name, "budget": budget}
                    row.update(run_row([f"preset={setting}", *common(batch, image_size, args.seed), *overrides]))
                    record(row)
    if "mapping" in parts:
        for map_name, label_map in LABEL_MAPS.items():
            for batch in batches:
                seeds = range(args.seed, args.seed + (args.mapping_batches if batch == 1 else max(1, args.mapping_batches // 2)))
                for on in (False, True):
                    overrides, budget = plan["gifd"]
                    coarse = next((o.split("=")[1] for o in overrides if "coarse_steps" in o), "?")
                    cells, accuracies, remappers = [], [], []
                    for seed in seeds:
                        cfg = ["preset=id-fashion", *common(batch, image_size, seed), "attack=gifd", *overrides,
                               f"dataset.label_map={label_map}", f"attack.label_mapping={str(on).lower()}"]
                        outcome = run_row(cfg)
                        result = outcome.pop("result", None)
                        cells.append(outcome)
                        if on and result is not None:
                            accuracies.append(mapping_accuracy(result, batch, image_size, seed))
                            remappers.append(result.reconstruction.extras["label_mapping"].get("remapper_accuracy"))
                    row = {"part": "mapping", "setting": f"fashion-{map_name}", "B": batch,
                           "attack": f"gifd label_mapping={'on' if on else 'off'}",
                           "budget": budget + (f" + coarse {coarse}" if on else "")}
                    row.update(mean_of(cells))
                    row["note"] = f"{len(cells)} batches"
                    if on and accuracies and None not in accuracies:
                        row["note"] += (f"; mapping accuracy {sum(accuracies) / len(accuracies):.2f}"
                                        f" (remapper {sum(remappers) / len(remappers):.2f})")
                    record(row)

    print(f"\nGIFD in and out of distribution, {image_size} px, labels inferred (PSNR / SSIM / label acc. / s)")
    print(f"{'part':<8} {'setting':<19} {'B':>2} {'attack':<24} {'budget':<28} {'PSNR':>6} {'SSIM':>6} {'label':>5}"
          f" {'s':>5}  note")
    for r in rows:
        print(f"{r['part']:<8} {r['setting']:<19} {r['B']:>2} {r['attack']:<24} {r['budget']:<28}"
              f" {fmt(r['psnr'], '6.2f')} {fmt(r['ssim'], '6.3f')} {fmt(r['label_accuracy'], '5.2f')}"
              f" {fmt(r['seconds'], '5.0f')}  {r['note']}")
    if args.csv and rows:
        print(f"\nwrote {write_csv(rows, args.csv)}")
    if size != "full":
        print("left out at this size (--full runs them): the official budgets (GIFD 1,000 steps × 4 restarts a"
              " stage, GGL CMA-ES 800 × 50, IG 4,800 × 4); more than one private batch per"
              " cell of the settings part")


if __name__ == "__main__":
    main()
