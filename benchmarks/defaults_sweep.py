"""A small paired sweep that chooses an attack's defaults at the budgets users run (300–2000 iterations).

Every candidate setting attacks the same private images with the same victim, the same true gradient and the
same seeded start as the plain loop of `bare_loop.py` (DLG LeNet, 32 px photo crops, B = 1, label known,
identity normalisation; one restart unless the candidate says otherwise). Printed per candidate: the mean PSNR
± 95 % t-interval over the images, the paired difference to the plain loop and to the attack's current
defaults, and the two photos the plain-loop comparison names (chelsea, coffee).

    python benchmarks/defaults_sweep.py                          # Inverting Gradients, 8 photos, 1000 its: ~15 min
    python benchmarks/defaults_sweep.py --candidates unsigned-cosine,init-rand --iterations 300
    python benchmarks/defaults_sweep.py --attack idlg            # iDLG (L-BFGS) at its own budget
"""

from __future__ import annotations

import time
from typing import Any

import torch
from _stats import t_interval
from _tables import parse_sized, sized_parser, write_csv
from bare_loop import DEFAULT_IMAGES, photo_victim, plain_loop, start

from fedinvert.attacks import ATTACKS
from fedinvert.data.photos import PHOTO_ORDER
from fedinvert.metrics import psnr_per_image

# candidate name -> keyword overrides of the attack ("defaults" = the attack's own defaults)
GRIDS: dict[str, dict[str, dict[str, Any]]] = {
    # every candidate names all five keywords, so a later change of the defaults does not change it
    "inverting_gradients": {
        "defaults": {},
        "paper-signed-step": {"signed": True, "schedule": "step", "lr": 0.1, "tv": 0.0001, "init": "randn"},
        "unsigned-constant": {"signed": False, "schedule": "constant", "lr": 0.1, "tv": 0.0001, "init": "randn"},
        "unsigned-cosine": {"signed": False, "schedule": "cosine", "lr": 0.1, "tv": 0.0001, "init": "randn"},
        "signed-cosine": {"signed": True, "schedule": "cosine", "lr": 0.1, "tv": 0.0001, "init": "randn"},
        "unsigned-step": {"signed": False, "schedule": "step", "lr": 0.1, "tv": 0.0001, "init": "randn"},
        "unsigned-cosine-lr0.03": {"signed": False, "schedule": "cosine", "lr": 0.03, "tv": 0.0001, "init": "randn"},
        "unsigned-cosine-lr0.3": {"signed": False, "schedule": "cosine", "lr": 0.3, "tv": 0.0001, "init": "randn"},
        "unsigned-cosine-tv1e-3": {"signed": False, "schedule": "cosine", "lr": 0.1, "tv": 0.001, "init": "randn"},
        "unsigned-cosine-tv1e-5": {"signed": False, "schedule": "cosine", "lr": 0.1, "tv": 1e-05, "init": "randn"},
        "unsigned-cosine-rand": {"signed": False, "schedule": "cosine", "lr": 0.1, "tv": 0.0001, "init": "rand"},
        "unsigned-constant-rand": {"signed": False, "schedule": "constant", "lr": 0.1, "tv": 0.0001, "init": "rand"},
        # second round, around the best of the first (unsigned, cosine, lr 0.1, tv 1e-3)
        "unsigned-constant-tv1e-3": {"signed": False, "schedule": "constant", "lr": 0.1, "tv": 0.001, "init": "randn"},
        "unsigned-cosine-tv3e-3": {"signed": False, "schedule": "cosine", "lr": 0.1, "tv": 0.003, "init": "randn"},
        "unsigned-cosine-tv1e-2": {"signed": False, "schedule": "cosine", "lr": 0.1, "tv": 0.01, "init": "randn"},
        "unsigned-cosine-tv1e-3-rand": {"signed": False, "schedule": "cosine", "lr": 0.1, "tv": 0.001, "init": "rand"},
        "unsigned-cosine-tv3e-2": {"signed": False, "schedule": "cosine", "lr": 0.1, "tv": 0.03, "init": "randn"},
    },
    # a quick look at 1000 steps on a BatchNorm victim (convnet); "attack" switches the attack of a candidate
    "gradinversion": {
        "defaults-r1": {"restarts": 1},
        "bn0-r1": {"restarts": 1, "bn": 0.0},
        "tv1e-2-r1": {"restarts": 1, "tv": 1e-2},
        "bn0-tv1e-2-r1": {"restarts": 1, "bn": 0.0, "tv": 1e-2},
        "ig-defaults": {"attack": "inverting_gradients"},
    },
    "idlg": {
        "defaults": {},
        "lr0.1": {"lr": 0.1},
        "strong_wolfe": {"line_search": "strong_wolfe"},
    },
    "dlg": {
        "defaults": {},
        "strong_wolfe": {"line_search": "strong_wolfe"},
    },
}
NAMED = ("chelsea", "coffee")


def attack_once(attack: str, obs, *, iterations: int, seed: int, kwargs: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """(reconstruction (B, C, H, W) in [0, 1], gradient evaluations) of one candidate, one restart, eager."""
    settings = {"restarts": 1, **kwargs}
    attack = settings.pop("attack", attack)
    built = ATTACKS.build(attack, iterations=iterations, compile=False, device="cpu", log_every=iterations,
                          **settings)
    rec = built.reconstruct(obs, rng=torch.Generator().manual_seed(seed))
    return rec.images, rec.iterations


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/defaults_sweep.csv",
                          full_help="all 11 photos", smoke_help="2 photos, 10 iterations, 2 candidates")
    parser.add_argument("--attack", default="inverting_gradients", choices=sorted(GRIDS))
    parser.add_argument("--candidates", default=None, help="comma-separated candidate names (default: all)")
    parser.add_argument("--iterations", type=int, default=None, help="default 1000 (DLG/iDLG: 300)")
    parser.add_argument("--images", default=None, help="comma-separated photo indices (default 0-7)")
    parser.add_argument("--model", default="lenet-dlg", help="the victim (default lenet-dlg)")
    parser.add_argument("--width", type=float, default=None, help="model.width of a convnet victim")
    parser.add_argument("--seed", type=int, default=0)
    args, size = parse_sized(parser)
    grid = GRIDS[args.attack]
    names = args.candidates.split(",") if args.candidates else list(grid)
    unknown = [n for n in names if n not in grid]
    if unknown:
        raise SystemExit(f"error: unknown candidate {unknown[0]!r}; known: {', '.join(grid)}")
    if size == "smoke":
        names = names[:2]
    default_its = 300 if args.attack in ("dlg", "idlg") else 1000
    iterations = args.iterations or (10 if size == "smoke" else default_its)
    if args.images:
        images = [int(i) for i in args.images.split(",")]
    else:
        images = list(range(len(PHOTO_ORDER))) if size == "full" else [1, 2] if size == "smoke" else DEFAULT_IMAGES
    options = {} if args.width is None else {"width": args.width}

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for index in images:
        obs, private, label, victim = photo_victim(index, model=args.model, **options)
        victim.eval()
        loop = plain_loop(victim, obs.update_list(), label, start(obs.image_shape, args.seed), iterations=iterations)
        loop_psnr = float(psnr_per_image(private, loop)[0])
        for name in names:
            began = time.perf_counter()
            images01, evaluations = attack_once(args.attack, obs, iterations=iterations, seed=args.seed,
                                                kwargs=grid[name])
            rows.append({"attack": args.attack, "candidate": name, "image": PHOTO_ORDER[index], "index": index,
                         "iterations": iterations, "evaluations": evaluations,
                         "psnr": float(psnr_per_image(private, images01)[0]), "loop_psnr": loop_psnr,
                         "seconds": time.perf_counter() - began})
            print(f"[{time.perf_counter() - t0:5.0f}s] {PHOTO_ORDER[index]:<20} {name:<26} {rows[-1]['psnr']:6.2f}"
                  f" (loop {loop_psnr:6.2f})", flush=True)

    print(f"\n{args.attack}, {args.model}{'' if args.width is None else f' width {args.width}'}, 32 px photos {images}, B = 1, label known, identity normalisation,"
          f" {iterations} iterations, one restart, the plain loop's start. PSNR in dB, mean ± 95 % t-interval:")
    print(f"{'candidate':<26} {'PSNR':>14} {'− loop':>14} {'− defaults':>14}" + "".join(f"{n:>9}" for n in NAMED))
    by_name = {name: [r for r in rows if r["candidate"] == name] for name in names}
    for name, cell in by_name.items():
        psnr = t_interval([r["psnr"] for r in cell])
        vs_loop = t_interval([r["psnr"] - r["loop_psnr"] for r in cell])
        base = by_name.get("defaults")
        vs_default = t_interval([a["psnr"] - b["psnr"] for a, b in zip(cell, base, strict=True)]) if base else None
        named = {r["image"]: r["psnr"] for r in cell}
        print(f"{name:<26} {psnr.mean:6.2f} ± {psnr.half:5.2f} {vs_loop.mean:+6.2f} ± {vs_loop.half:5.2f}"
              + (f" {vs_default.mean:+6.2f} ± {vs_default.half:5.2f}" if vs_default else f"{'':>15}")
              + "".join(f"{named[n]:9.2f}" if n in named else f"{'':>9}" for n in NAMED))
    loop_cell = by_name[names[0]]
    loop = t_interval([r["loop_psnr"] for r in loop_cell])
    print(f"{'plain loop':<26} {loop.mean:6.2f} ± {loop.half:5.2f}{'':>30}"
          + "".join(f"{r['loop_psnr']:9.2f}" for n in NAMED for r in loop_cell if r["image"] == n))
    if args.csv:
        print(f"\nwrote {write_csv(rows, args.csv)}")


if __name__ == "__main__":
    main()
