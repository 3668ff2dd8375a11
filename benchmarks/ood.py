"""In distribution, out of distribution, and label mapping (GIFD's journal extension).

Part 1 (``settings``) — GIFD vs GIFD-z vs GGL vs Inverting Gradients in each setting shipped as a preset:

* ``id-fashion``: Fashion-MNIST test images, our class-conditional ``fashion`` prior (in distribution);
* ``ood-face-lfw``: the face DCGAN on real LFW faces; ``ood-face-photos``: the face DCGAN on colour photos;
* ``ood-fashion-digits``: the fashion prior on handwritten digits; ``ood-fashion-photos``: on grey photo crops.

Part 2 (``mapping``) — label mapping: Fashion-MNIST test images whose FL task numbers the ten classes
differently (``permuted``) or groups them into five (``grouped``); GIFD with ``attack.label_mapping`` off and
on, and the mapping accuracy (the share of reconstructions whose generator label is the private image's true
class, after matching). The coarse pass has the official 100 steps a stage.

Every run goes through the runner with the preset plus budget overrides; labels are inferred; ReLU ConvNet
victim at half width; seconds are the attack's own time. Each cell runs on ``--batches`` private batches
(default 8) of distinct, seeded images, the same batches for every attack of a data set; it reports the mean
and 95 % t-interval over its batches of PSNR and of the leakage above the no-leak reference of the same batch
(the best of a constant image, the mean image and random images of the public data), the reference itself
and re-identification top-1; then paired differences on the same batches (GIFD − IG, GIFD − GIFD-z,
GIFD − GGL, mapping on − off). The 11 photos hold 8 disjoint batches only at B = 1.

    python benchmarks/ood.py           # 32 px, B = 1: id-fashion, ood-face-lfw, ood-fashion-digits with GIFD,
                                       # GIFD-z, IG; mapping 'permuted' off/on: ~30 min on 1 core
    python benchmarks/ood.py --full    # all five settings × GIFD, GIFD-z, GGL, IG at B = 1 and 4 (photos B = 1),
                                       # both mappings at B = 1 and 4, official budgets (1,000 × 4); GPU-sized
    python benchmarks/ood.py --smoke   # every path, 2 batches, tiny budgets (numbers meaningless)

Writes the cell table (``--csv``), the paired differences (``*_paired.csv``) and every batch's scores
(``*_batches.csv``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from _stats import PAIRED_FIELDS, batch_indices, pair_label, paired, run_cell, summarize
from _tables import companion, parse_sized, print_cells, print_pairs, sized_parser, write_csv

from fedinvert.config import resolve_config
from fedinvert.data.loader import build_dataset
from fedinvert.errors import FedinvertError
from fedinvert.runner import RunResult

SETTINGS = ("id-fashion", "ood-face-lfw", "ood-face-photos", "ood-fashion-digits", "ood-fashion-photos")
ATTACKS = ("gifd", "gifd-z", "ggl", "inverting_gradients")
#: FL label of Fashion-MNIST class c
LABEL_MAPS = {"permuted": [3, 7, 1, 9, 0, 5, 2, 8, 6, 4], "grouped": [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]}
MAPPING_KEYS = ("coarse_steps", "remapper_samples", "remapper_epochs")  # GIFD's label-mapping keywords

#: attack -> (overrides, the budget in words) per size: DEFAULT_BUDGETS gives every attack 1,000 gradient
#: evaluations per private batch (IG at its knee in benchmarks/results/convergence.csv). The coarse/remapper
#: keys apply to GIFD with label mapping only.
DEFAULT_BUDGETS: dict[str, tuple[list[str], str]] = {
    "gifd": (["attack.steps_per_stage=100", "attack.restarts=2", "attack.coarse_steps=100"], "stages × 100 × 2"),
    "gifd-z": (["attack.steps_per_stage=500", "attack.restarts=2"], "500 × 2"),
    "ggl": (["attack.iterations=100", "attack.population=10"], "CMA-ES 100 × 10"),
    "inverting_gradients": (["attack.iterations=1000", "attack.restarts=1"], "1000 × 1"),
}
FULL_BUDGETS: dict[str, tuple[list[str], str]] = {
    "gifd": (["attack.steps_per_stage=1000", "attack.restarts=4", "attack.coarse_steps=100"],
             "stages × 1000 × 4"),
    "gifd-z": (["attack.steps_per_stage=1000", "attack.restarts=4"], "1000 × 4"),
    "ggl": (["attack.iterations=800", "attack.population=50"], "CMA-ES 800 × 50"),
    "inverting_gradients": (["attack.iterations=4800", "attack.restarts=4"], "4800 × 4"),
}
SMOKE_BUDGETS: dict[str, tuple[list[str], str]] = {
    "gifd": (["attack.steps_per_stage=2", "attack.restarts=1", "attack.coarse_steps=2",
              "attack.remapper_samples=200", "attack.remapper_epochs=1"], "smoke"),
    "gifd-z": (["attack.steps_per_stage=2", "attack.restarts=1"], "smoke"),
    "ggl": (["attack.iterations=2", "attack.population=4"], "smoke"),
    "inverting_gradients": (["attack.iterations=2", "attack.restarts=1"], "smoke"),
}
BUDGETS = {"default": DEFAULT_BUDGETS, "full": FULL_BUDGETS, "smoke": SMOKE_BUDGETS}
IMAGE_SIZE = {"default": 32, "full": 32, "smoke": 16}
BATCHES = {"default": 8, "full": 8, "smoke": 2}
PAIRS = (("gifd", "inverting_gradients"), ("gifd", "gifd-z"), ("gifd", "ggl"))


@dataclass(frozen=True)
class Grid:
    settings: list[tuple[str, int, tuple[str, ...]]]  # (preset, B, attacks)
    mapping: list[tuple[str, int]]  # (label map, B)


GRIDS = {
    "default": Grid(
        settings=[(s, 1, ("gifd", "gifd-z", "inverting_gradients"))
                  for s in ("id-fashion", "ood-face-lfw", "ood-fashion-digits")],
        mapping=[("permuted", 1)],
    ),
    "full": Grid(
        settings=[(s, b, ATTACKS) for s in SETTINGS for b in (1, 4) if not (b > 1 and s.endswith("photos"))],
        mapping=[(m, b) for m in LABEL_MAPS for b in (1, 4)],
    ),
    "smoke": Grid(
        settings=[("id-fashion", 2, ATTACKS), ("ood-face-photos", 1, ("gifd", "inverting_gradients"))],
        mapping=[("grouped", 2)],
    ),
}


def left_out(size: str) -> list[str]:
    """What the chosen size does not run that ``--full`` does."""
    if size == "smoke":
        return ["all but a few cells at tiny budgets and 16 px: the numbers are meaningless"]
    if size == "full":
        return ["the photo settings at B = 4 (the 11 photos hold fewer than 8 disjoint batches of 4)"]
    grid, full = GRIDS[size], GRIDS["full"]
    have = {(s, b, a) for s, b, attacks in grid.settings for a in attacks}
    out = []
    for s, b, attacks in full.settings:
        missing = [a for a in attacks if (s, b, a) not in have]
        if missing:
            out.append(f"{s} B = {b}: {'every attack' if len(missing) == len(attacks) else ', '.join(missing)}")
    out += [f"label mapping '{m}' at B = {b}" for m, b in full.mapping if (m, b) not in grid.mapping]
    out.append("budgets as in the table instead of the papers' (GIFD 1,000 steps × 4 restarts a stage,"
               " GGL CMA-ES 800 × 50, IG 4,800 × 4)")
    return out


def common(batch: int, image_size: int) -> list[str]:
    return [f"batch_size={batch}", f"image_size={image_size}", "dataset.unique_labels=true",
            "attack.compile=false", "progress=false", "device=cpu"]


def attack_overrides(name: str, plan: dict[str, tuple[list[str], str]], *, mapping: bool) -> tuple[list[str], str]:
    overrides, budget = plan[name]
    if not mapping:
        overrides = [o for o in overrides if not any(f".{k}=" in o for k in MAPPING_KEYS)]
    return [f"attack={name}", *overrides], budget


def mapping_extra(result: RunResult, _: int) -> dict[str, Any]:
    """Mapping accuracy (matched reconstructions generated under their private image's true Fashion class)
    and the remapper's own accuracy; None where the run did no label mapping."""
    mapping = result.reconstruction.extras.get("label_mapping")
    order = result.metrics.get("order")
    if not mapping or "mapped_labels" not in mapping or order is None:
        return {"mapping_accuracy": None, "remapper_accuracy": None}
    info = result.scenario.info
    original = build_dataset(info["dataset"]).labels(split=info["split"])[info["indices"]]
    mapped = mapping["mapped_labels"]
    hits = sum(int(mapped[order[i]] == int(original[i])) for i in range(len(original)))
    return {"mapping_accuracy": hits / len(original), "remapper_accuracy": mapping.get("remapper_accuracy")}


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/ood.csv",
                          full_help="all five settings and both label maps at B = 1 and 4, official budgets",
                          smoke_help="every path on 2 batches with tiny budgets")
    parser.add_argument("--batches", type=int, default=None, help="private batches per cell (default 8; smoke 2)")
    parser.add_argument("--parts", default="settings,mapping", help="comma-separated: settings, mapping")
    parser.add_argument("--settings", default=None, help="comma-separated subset of the size's presets")
    parser.add_argument("--seed", type=int, default=0, help="seeds the batch layout; batch k runs with seed+k")
    args, size = parse_sized(parser)
    n_batches = args.batches or BATCHES[size]
    image_size, plan, grid = IMAGE_SIZE[size], BUDGETS[size], GRIDS[size]
    parts = args.parts.split(",")
    chosen = set(args.settings.split(",")) if args.settings else None
    setting_cells = [c for c in grid.settings if "settings" in parts and (chosen is None or c[0] in chosen)]
    mapping_cells = grid.mapping if "mapping" in parts else []

    # each data set's batches: one seeded layout, smaller B the prefixes of the largest
    datasets = {s: resolve_config([f"preset={s}"])["dataset"] for s, _, _ in setting_cells}
    if mapping_cells:
        datasets["mapping"] = resolve_config(["preset=id-fashion"])["dataset"]
    key = {s: (d["name"], d.get("split")) for s, d in datasets.items()}
    sizes = [(key[s], b) for s, b, _ in setting_cells] + [(key["mapping"], b) for _, b in mapping_cells]
    stride = {k: max(b for kk, b in sizes if kk == k) for k, _ in sizes}

    def layout(setting: str, batch: int) -> list[list[int]]:
        name, split = key[setting]
        return batch_indices(name, split=split, n_batches=n_batches, per_batch=batch, seed=args.seed,
                             unique_labels=True, stride=stride[key[setting]])

    cells: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    total = sum(len(a) for _, _, a in setting_cells) + 2 * len(mapping_cells)
    print(f"ood '{size}': {total} cells × {n_batches} batches, {image_size} px, {args.threads} thread(s)", flush=True)

    def run_and_record(labels: dict[str, Any], overrides: list[str], batches: list[list[int]],
                       mapping: bool) -> None:
        def progress(row: dict[str, Any]) -> None:
            note = f" mapping {row['mapping_accuracy']:.2f}" if row.get("mapping_accuracy") is not None else ""
            print(f"[{time.perf_counter() - t0:6.0f}s] {labels['setting']:<19} B={labels['B']}"
                  f" {labels['attack']:<24} batch {row['batch'] + 1}/{n_batches}: psnr {row['psnr']:.2f}"
                  f" (reference {row['reference_psnr']:.2f}, leak {row['leakage_db']:+.2f}){note}"
                  f" {row['seconds']:.0f}s", flush=True)

        try:
            rows = run_cell(overrides, batches, seed=args.seed, extra=mapping_extra if mapping else None,
                            on_batch=progress)
        except FedinvertError as err:
            cells.append({**labels, "note": f"error: {err}"})
            print(f"{labels['setting']} B={labels['B']} {labels['attack']}: error: {err}", flush=True)
            return
        results[(labels["setting"], labels["B"], labels["attack"])] = rows
        extra = ("mapping_accuracy", "remapper_accuracy") if mapping else ()
        cells.append({**labels, **summarize(rows, means=extra)})
        raw.extend({**labels, **r} for r in rows)

    for setting, batch, attacks in setting_cells:
        batches = layout(setting, batch)
        for name in attacks:
            overrides, budget = attack_overrides(name, plan, mapping=False)
            labels = {"part": "settings", "setting": setting, "B": batch, "attack": name, "budget": budget}
            run_and_record(labels, [f"preset={setting}", *common(batch, image_size), *overrides], batches, False)
    for map_name, batch in mapping_cells:
        batches = layout("mapping", batch)
        for on in (False, True):
            overrides, budget = attack_overrides("gifd", plan, mapping=on)
            coarse = next((o.split("=")[1] for o in overrides if ".coarse_steps=" in o), "?")
            labels = {"part": "mapping", "setting": f"fashion-{map_name}", "B": batch,
                      "attack": f"gifd label_mapping={'on' if on else 'off'}",
                      "budget": budget + (f" + coarse {coarse}" if on else "")}
            cfg = ["preset=id-fashion", *common(batch, image_size), *overrides,
                   f"dataset.label_map={LABEL_MAPS[map_name]}", f"attack.label_mapping={str(on).lower()}"]
            run_and_record(labels, cfg, batches, on)

    pairs = []
    for setting, batch, _ in setting_cells:
        for a, b in PAIRS:
            ra, rb = results.get((setting, batch, a)), results.get((setting, batch, b))
            if ra and rb:
                pairs.append({"part": "settings", "setting": setting, "B": batch, "difference": pair_label(a, b),
                              **paired(ra, rb)})
    for map_name, batch in mapping_cells:
        setting = f"fashion-{map_name}"
        on, off = results.get((setting, batch, "gifd label_mapping=on")), results.get((setting, batch,
                                                                                          "gifd label_mapping=off"))
        if on and off:
            pairs.append({"part": "mapping", "setting": setting, "B": batch,
                          "difference": pair_label("mapping on", "off"), **paired(on, off)})

    print(f"\nGIFD in and out of distribution, {image_size} px, labels inferred; mean ± 95 % interval over"
          f" {n_batches} private batches; ref = no-leak reference PSNR")
    print_cells(cells, ("part", "setting", "B", "attack", "budget"))
    mapped = [c for c in cells if c.get("mapping_accuracy") is not None]
    for c in mapped:
        print(f"  {c['setting']} B={c['B']}: mapping accuracy {c['mapping_accuracy']:.2f}"
              f" (remapper {c['remapper_accuracy']:.2f})")
    if pairs:
        print("\nPaired differences in PSNR on the same batches (a − b)")
        print_pairs(pairs, ("part", "setting", "B"))
    if args.csv and cells:
        print(f"\nwrote {write_csv(cells, args.csv, CELL_FIELDS, digits=4)}, {write_csv(pairs, companion(args.csv, 'paired'), PAIR_FIELDS, digits=4)}"
              f" and {write_csv(raw, companion(args.csv, 'batches'), digits=4)}")
    print(f"{time.perf_counter() - t0:.0f} s in all")
    lines = left_out(size)
    print("left out at this size (--full runs them):" if size != "full" else "left out:")
    for line in lines:
        print(f"  - {line}")


CELL_FIELDS = ["part", "setting", "B", "attack", "budget", "n_batches", "psnr_mean", "psnr_ci95", "ssim_mean",
               "reference_psnr", "leakage_db", "leakage_ci95", "reid_top1", "st_lpips", "label_accuracy",
               "mapping_accuracy", "remapper_accuracy", "seconds_mean", "verdict", "note"]
PAIR_FIELDS = ["part", "setting", "B", "difference", *PAIRED_FIELDS]


if __name__ == "__main__":
    main()
