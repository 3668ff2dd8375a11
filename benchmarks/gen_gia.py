"""Generation-based attacks side by side: GIFD and its ablations, GGL, GIAS, and Inverting Gradients.

Every attack inverts the same FedSGD gradient of a ReLU ConvNet (half width, random initialisation, eval
mode, 10 classes) with inferred labels, with the face DCGAN bundled in gan-face-generate as the prior, on
three kinds of private images:

* ``prior``: samples of the face DCGAN itself (the in-distribution upper bound);
* ``lfw``: real LFW faces (near the prior's domain: other faces, other cameras);
* ``photos``: the bundled colour photos (astronaut, cat, coffee, rocket, ...; out of distribution).

Each attack gets the same number of gradient evaluations per private batch (restarts × steps; stated in the
table); seconds are the attack's own time on this machine. Scores are after Hungarian matching.

    python benchmarks/gen_gia.py           # 32 px, 600 gradient evaluations per attack: ~15-20 min on 1 core
    python benchmarks/gen_gia.py --full    # 64 px, official budgets (GIFD 1,000 steps × 4 restarts); GPU-sized
    python benchmarks/gen_gia.py --smoke   # every path, tiny budgets (numbers meaningless)
"""

from __future__ import annotations

import time
from typing import Any

import torch
from _tables import parse_sized, sized_parser, write_csv

from fedinvert.attacks import ATTACKS
from fedinvert.data import load_batch
from fedinvert.errors import FedinvertError
from fedinvert.fl import FedSGDClient
from fedinvert.metrics import evaluate
from fedinvert.models import build_model
from fedinvert.observation import Observation
from fedinvert.priors import PRIORS, to_victim

NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
SETTINGS = ("prior", "lfw", "photos")


def budgets(size: str) -> dict[str, tuple[dict[str, Any], str]]:
    """attack name -> (keyword arguments, the budget in words)."""
    if size == "smoke":
        s, r = 2, 1
        return {
            "gifd": ({"steps_per_stage": s, "restarts": r}, "smoke"),
            "gifd-z": ({"steps_per_stage": s, "restarts": r}, "smoke"),
            "gifd-f": ({"steps_per_stage": s, "restarts": r}, "smoke"),
            "gifd-e": ({"steps_per_stage": s, "restarts": r}, "smoke"),
            "ggl": ({"iterations": 2, "population": 4}, "smoke"),
            "gias": ({"latent_steps": s, "finetune_steps": s, "restarts": r}, "smoke"),
            "inverting_gradients": ({"iterations": s, "restarts": r}, "smoke"),
        }
    if size == "full":  # the official budgets
        return {
            "gifd": ({"steps_per_stage": 1000, "restarts": 4}, "5 stages × 1000 × 4"),
            "gifd-z": ({"steps_per_stage": 1000, "restarts": 4}, "1000 × 4"),
            "gifd-f": ({"steps_per_stage": 1000, "restarts": 4}, "5 stages × 1000 × 4"),
            "gifd-e": ({"steps_per_stage": 1000, "restarts": 4}, "5 stages × 1000 × 4"),
            "ggl": ({"iterations": 800, "population": 50}, "CMA-ES 800 × 50"),
            "gias": ({"latent_steps": 1000, "finetune_steps": 8000, "restarts": 4}, "(1000 + 8000) × 4"),
            "inverting_gradients": ({"iterations": 4800, "restarts": 4}, "4800 × 4"),
        }
    # default: 600 gradient evaluations per private batch for every attack
    return {
        "gifd": ({"steps_per_stage": 60, "restarts": 2}, "5 stages × 60 × 2"),
        "gifd-z": ({"steps_per_stage": 300, "restarts": 2}, "300 × 2"),
        "gifd-f": ({"steps_per_stage": 60, "restarts": 2}, "5 stages × 60 × 2"),
        "gifd-e": ({"steps_per_stage": 60, "restarts": 2}, "5 stages × 60 × 2"),
        "ggl": ({"iterations": 60, "population": 10}, "CMA-ES 60 × 10"),
        "gias": ({"latent_steps": 100, "finetune_steps": 200, "restarts": 2}, "(100 + 200) × 2"),
        "inverting_gradients": ({"iterations": 300, "restarts": 2}, "300 × 2"),
    }


def private_batch(setting: str, batch: int, size: int, prior: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, size, size) images in [0, 1] and labels in 0..9 (distinct where B ≤ 10)."""
    labels = torch.arange(batch) % 10
    if setting == "prior":
        with torch.no_grad():
            z = prior.sample_latent(batch, generator=torch.Generator().manual_seed(1000 + seed))
            images = to_victim(prior(z), image_shape=(3, size, size), normalization=((0,) * 3, (1,) * 3))
        return images.clamp(0, 1), labels
    data = load_batch(setting, batch_size=batch, image_size=size, channels=3, seed=seed)
    return data.images, labels


def observe(images01: torch.Tensor, labels: torch.Tensor, seed: int) -> Observation:
    size = images01.shape[-1]
    model = build_model("convnet", in_channels=3, num_classes=10, image_size=size, width=0.5, seed=seed)
    update = FedSGDClient(mode="eval").update(model, (images01 - 0.5) / 0.5, labels)
    return Observation(model=model, update=update, kind="gradient", image_shape=(3, size, size), num_classes=10,
                       normalization=NORM, batch_size=len(labels))


def run_one(name: str, kwargs: dict[str, Any], prior: Any, obs: Observation, private: torch.Tensor,
            labels: torch.Tensor, seed: int) -> dict[str, Any]:
    with_prior = {"prior": prior} if name != "inverting_gradients" else {}
    attack = ATTACKS.build(name, **with_prior, **kwargs, compile=False, device="cpu")
    started = time.perf_counter()
    rec = attack.reconstruct(obs, rng=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - started
    m = evaluate(private, rec.images, true_labels=labels, rec_labels=rec.labels)
    return {"psnr": m["psnr"], "ssim": m["ssim"], "label_accuracy": m["label_accuracy"], "seconds": seconds,
            "evaluations": rec.iterations, "stage": rec.extras.get("stage", "")}


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/gen_gia.csv",
                          full_help="64 px and the official budgets (GPU-sized)", smoke_help="tiny budgets, every path")
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--attacks", default=None, help="comma-separated attack names (default: all seven)")
    parser.add_argument("--feature-lr-scale", type=float, default=None,
                        help="attack.feature_lr_scale for GIFD and its ablations (default: the attack's)")
    parser.add_argument("--seed", type=int, default=0)
    args, size = parse_sized(parser)
    image_size = 64 if args.full else 16 if args.smoke else 32
    plan = budgets(size)
    names = args.attacks.split(",") if args.attacks else list(plan)
    try:
        prior = PRIORS.build("face-dcgan")
    except FedinvertError as err:
        raise SystemExit(f"gen_gia needs the face-dcgan prior: {err}") from None

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for setting in args.settings.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            private, labels = private_batch(setting, batch, image_size, prior, args.seed)
            obs = observe(private, labels, args.seed)
            for name in names:
                kwargs, budget = plan[name]
                if args.feature_lr_scale is not None and name.startswith("gifd") and name != "gifd-z":
                    kwargs = {**kwargs, "feature_lr_scale": args.feature_lr_scale}
                    budget += f", feature lr ×{args.feature_lr_scale:g}"
                row = {"setting": setting, "B": batch, "attack": name, "budget": budget}
                row.update(run_one(name, kwargs, prior, obs, private, labels, args.seed))
                rows.append(row)
                print(f"[{time.perf_counter() - t0:6.0f}s] {setting:<6} B={batch} {name:<20} psnr={row['psnr']:.2f}"
                      f" ssim={row['ssim']:.3f} {row['seconds']:.0f}s", flush=True)

    print(f"\nGeneration-based attacks, {image_size} px, ConvNet (half width, eval), labels inferred, face-dcgan prior")
    print(f"{'setting':<7} {'B':>2} {'attack':<20} {'budget':<20} {'PSNR':>6} {'SSIM':>6} {'label':>5} {'s':>5}  stage")
    for r in rows:
        print(f"{r['setting']:<7} {r['B']:>2} {r['attack']:<20} {r['budget']:<20} {r['psnr']:6.2f} {r['ssim']:6.3f}"
              f" {r['label_accuracy']:5.2f} {r['seconds']:5.0f}  {r['stage']}")
    print("\nBest PSNR per setting and batch:")
    for setting in args.settings.split(","):
        for batch in sorted({r["B"] for r in rows}):
            cell = [r for r in rows if r["setting"] == setting and r["B"] == batch]
            if cell:
                best = max(cell, key=lambda r: r["psnr"])
                gifd = next((r for r in cell if r["attack"] == "gifd"), None)
                gap = f" (GIFD {gifd['psnr'] - best['psnr']:+.2f} dB)" if gifd and best is not gifd else ""
                print(f"  {setting:<7} B={batch}: {best['attack']} {best['psnr']:.2f} dB{gap}")
    if args.csv and rows:
        print(f"\nwrote {write_csv(rows, args.csv)}")
    if size != "full":
        print("left out at this size (--full runs them): 64 px (here 32 px); the official budgets (GIFD 1,000"
              " steps × 4 restarts a stage, GGL CMA-ES 800 × 50, GIAS (1,000 + 8,000) × 4, IG 4,800 × 4);"
              " more than one private batch per cell")


if __name__ == "__main__":
    main()
