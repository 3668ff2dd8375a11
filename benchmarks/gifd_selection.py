"""Which GIFD stage to return: the official least-distance rule against a held-out rule and restart agreement,
and against the latent stage alone (GIFD-z) at the same total budget.

Per setting, every rule attacks the same private batches (B = 1, 32 px, half-width ReLU ConvNet, labels
inferred, through the runner):

* ``id-fashion``: Fashion-MNIST test images with our ``fashion`` prior (the prior's own domain);
* ``ood-face-lfw``: real LFW faces with the face DCGAN (near its domain);
* ``photos``: the bundled colour photos with the face DCGAN (out of distribution);
* ``samples-fashion``, ``samples-face``: images the prior itself generated (``--settings`` opt-in; written at
  32 px to a temporary image folder, 4 per class of the fashion prior, 24 of the face DCGAN over 10 labels) — the most
  favourable case for GIFD, where an exact latent exists.

Cells: GIFD with ``attack.selection`` = ``least_distance`` (official), ``held_out`` (10 % of the update's
coordinates never optimised; the stage with the least distance on them is returned) and ``agreement`` (the
stage whose two restarts agree best), each 5 stages × 60 steps × 2 restarts; GIFD-z 300 × 2 (the same 600
gradient evaluations in the latent alone). Mean ± 95 % interval over the batches with the no-leak reference;
paired differences on the same batches against the official rule and against GIFD-z.

    python benchmarks/gifd_selection.py            # 3 settings × 4 cells × 8 batches: ~30 min on 1 core
    python benchmarks/gifd_selection.py --full     # 1000 steps a stage × 4 restarts (GIFD-z 5000 × 4); GPU-sized
    python benchmarks/gifd_selection.py --smoke    # every path, 2 batches, tiny budgets
    python benchmarks/gifd_selection.py --settings id-fashion --batch-size 4 --baselines \
        --csv benchmarks/results/gifd_selection_b4.csv   # B = 4, with IG (600 × 1) and GGL (CMA-ES 60 × 10)

``--baselines`` adds Inverting Gradients and GGL at the same 600 gradient evaluations.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _stats import batch_indices, pair_label, paired, run_cell, summarize
from _tables import companion, parse_sized, print_cells, print_pairs, sized_parser, write_csv
from PIL import Image

from fedinvert.config import resolve_config
from fedinvert.priors import PRIORS


def write_samples(prior_name: str, root: Path, *, size: int, seed: int = 0) -> list[str]:
    """Samples of ``prior_name`` as PNG files in class folders under ``root`` (``size`` px); the overrides that
    load them as the private data set."""
    prior = PRIORS.build(prior_name).freeze()
    g = torch.Generator().manual_seed(seed)
    # 4 samples of each of the fashion prior's classes; the unconditional face prior's 24 samples spread over
    # 10 arbitrary class folders (the victim's labels; GIFD infers them from the update)
    labels = torch.arange(40) // 4 if prior.is_conditional else torch.arange(24) % 10
    with torch.no_grad():
        images = prior(prior.sample_latent(len(labels), generator=g),
                       prior.condition(labels) if prior.is_conditional else None)
    images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(folder / f"{i:03d}.png")
    return ["dataset=folder", f"dataset.root={root}", f"channels={images.shape[1]}", f"prior={prior_name}"]

RULES = ("least_distance", "held_out", "agreement")
#: size -> (GIFD steps a stage, restarts); GIFD-z gets stages × steps in its one stage
BUDGETS = {"default": (60, 2), "full": (1000, 4), "smoke": (2, 2)}
#: setting -> overrides
SETTINGS: dict[str, list[str]] = {
    "id-fashion": ["preset=id-fashion"],
    "ood-face-lfw": ["preset=ood-face-lfw"],
    "photos": ["dataset=photos", "prior=face-dcgan"],
}
#: opt-in settings whose private images are samples of the prior: setting -> prior
SAMPLE_SETTINGS = {"samples-fashion": "fashion", "samples-face": "face-dcgan"}
COMMON = ["dataset.unique_labels=true", "model=convnet", "model.width=0.5", "attack.compile=false",
          "progress=false", "device=cpu"]


def cells_for(size: str, stages: int, baselines: bool = False) -> list[tuple[str, list[str], str]]:
    steps, restarts = BUDGETS[size]
    total = steps * stages * restarts
    out = [(f"gifd {rule}", ["attack=gifd", f"attack.selection={rule}", f"attack.steps_per_stage={steps}",
                             f"attack.restarts={restarts}"], f"{stages} stages × {steps} × {restarts}")
           for rule in RULES]
    out.append(("gifd-z", ["attack=gifd-z", f"attack.steps_per_stage={steps * stages}", f"attack.restarts={restarts}"],
                f"{steps * stages} × {restarts}"))
    if baselines:
        population = 10 if total >= 20 else 2
        out.append(("inverting_gradients", ["attack=inverting_gradients", f"attack.iterations={total}",
                                            "attack.restarts=1"], f"{total} × 1"))
        out.append(("ggl", ["attack=ggl", f"attack.iterations={total // population}", f"attack.population={population}"],
                    f"CMA-ES {total // population} × {population}"))
    return out


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/gifd_selection.csv",
                          full_help="1000 steps a stage × 4 restarts", smoke_help="2 batches, tiny budgets")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {', '.join(SETTINGS)}")
    parser.add_argument("--batch-size", type=int, default=1, help="images per private batch")
    parser.add_argument("--baselines", action="store_true", help="add Inverting Gradients and GGL at the same budget")
    parser.add_argument("--seed", type=int, default=0, help="seeds the batch layout; batch k runs with seed+k")
    args, size = parse_sized(parser)
    n_batches = 2 if size == "smoke" else 8
    image_size = 16 if size == "smoke" else 32
    cells: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="gifd_selection_")
    for setting in args.settings.split(","):
        if setting in SAMPLE_SETTINGS:
            data_overrides = write_samples(SAMPLE_SETTINGS[setting], Path(scratch.name) / setting, size=image_size)
        elif setting in SETTINGS:
            data_overrides = SETTINGS[setting]
        else:
            raise SystemExit(f"unknown setting {setting!r}; choose from {', '.join([*SETTINGS, *SAMPLE_SETTINGS])}")
        base = [*data_overrides, *COMMON, f"image_size={image_size}", f"batch_size={args.batch_size}"]
        data = resolve_config([*base, "attack=gifd"])["dataset"]
        layout = batch_indices(data["name"], split=data.get("split"), n_batches=n_batches, per_batch=args.batch_size,
                               seed=args.seed, unique_labels=True, root=data.get("root"))
        stages = PRIORS.build(resolve_config([*base, "attack=gifd"])["prior"]["name"]).num_stages
        rows_of: dict[str, list[dict[str, Any]]] = {}
        for name, extra, budget in cells_for(size, stages, args.baselines):
            labels = {"setting": setting, "attack": name, "budget": budget}

            def stage_of(result: Any, _: int) -> dict[str, Any]:
                return {"stage": result.reconstruction.extras.get("stage")}

            rows = run_cell([*base, *extra], layout, seed=args.seed, extra=stage_of)
            rows_of[name] = rows
            cells.append({**labels, **summarize(rows), "stages": " ".join(str(r["stage"]) for r in rows)})
            raw.extend({**labels, **r} for r in rows)
            print(f"[{time.perf_counter() - t0:6.0f}s] {setting:<13} {name:<20} psnr {cells[-1]['psnr_mean']:.2f}"
                  f" ± {cells[-1]['psnr_ci95']:.2f} (ref {cells[-1]['reference_psnr']:.2f},"
                  f" leak {cells[-1]['leakage_db']:+.2f}) stages {cells[-1]['stages']}", flush=True)
        for a, b in [("gifd held_out", "gifd least_distance"), ("gifd agreement", "gifd least_distance"),
                     ("gifd least_distance", "gifd-z"), ("gifd held_out", "gifd-z"), ("gifd agreement", "gifd-z")]:
            pairs.append({"setting": setting, "difference": pair_label(a, b), **paired(rows_of[a], rows_of[b])})
        for other in ("inverting_gradients", "ggl"):
            if other in rows_of:
                pairs.append({"setting": setting, "difference": pair_label("gifd least_distance", other),
                              **paired(rows_of["gifd least_distance"], rows_of[other])})
    print(f"\nGIFD stage selection, B = {args.batch_size}, {image_size} px, half-width ConvNet, labels inferred; mean ± 95 % over"
          f" {n_batches} private batches; ref = no-leak reference PSNR")
    print_cells(cells, ("setting", "attack", "budget"))
    for c in cells:
        print(f"  {c['setting']:<13} {c['attack']:<20} chosen stages: {c['stages']}")
    print("\nPaired differences in PSNR on the same batches (a − b)")
    print_pairs(pairs, ("setting",))
    if args.csv:
        print(f"\nwrote {write_csv(cells, args.csv, digits=4)}, {write_csv(pairs, companion(args.csv, 'paired'), digits=4)}"
              f" and {write_csv(raw, companion(args.csv, 'batches'), digits=4)}")
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
