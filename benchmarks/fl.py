"""Realistic federated learning against Inverting Gradients and GIFD: FedAvg simulation and defences.

Part 1 has the shape of the TPAMI GIA survey's Table III (Guo et al. 2025): a FedAvg client trains E local
epochs with local batch b and shares its weight delta; the attacker unrolls the known local training
(strong), the survey's guess b = 8, E = 2, lr 1e-3 (weak), or treats −Δ/η as one gradient (none).
Part 2 runs FedSGD against each defence at several strengths, with the adaptive attacker off and on
(on replays the defence's deterministic transform; noise and DP-SGD have none, so they run once).

    python benchmarks/fl.py            # the default subset: about 20 minutes on 2 shared CPU cores
    python benchmarks/fl.py --full     # the paper-sized grid (attack defaults, 8 images; GPU-sized)
    python benchmarks/fl.py --smoke    # a short check that every path runs (numbers meaningless)

Every run: ConvNet with GroupNorm (DP-SGD cannot train BatchNorm) at half width, LFW faces, labels known to
the attacker (the survey's setting), local lr 0.01 (the survey's), eager steps (compiling the unrolled
simulation takes minutes here). GIFD uses the face-dcgan prior through the runner (attack=gifd
prior=face-dcgan); it is skipped with a note when the prior cannot be loaded. Prints the table, writes it as
CSV (``--csv``), and lists what the chosen size left out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from _tables import fmt, parse_sized, sized_parser, write_csv

from fedinvert.config import resolve_config
from fedinvert.errors import FedinvertError
from fedinvert.runner import run

SIMULATIONS = ("strong", "weak", "none")

#: defence -> (parameter, strengths from weak to strong, fixed extra overrides)
DEFENCES: dict[str, tuple[str, list[Any], list[str]]] = {
    "gaussian_noise": ("std", [1e-3, 1e-2, 1e-1], []),
    "laplace_noise": ("scale", [1e-3, 1e-2, 1e-1], []),
    "clipping": ("bound", [1.0, 0.1, 0.01], ["defense.clipping.per_layer=true"]),
    "pruning": ("prune_ratio", [0.5, 0.9, 0.99], []),
    "quantization": ("bits", [8, 4, 2], []),
    "soteria": ("prune_ratio", [0.4, 0.8, 0.95], []),
    "secure_aggregation": ("clients", [2, 4, 8], []),
    "dp_sgd": ("noise_multiplier", [0.01, 0.1, 1.0], ["defense.dp_sgd.max_grad_norm=1.0"]),
}
REPLAYABLE = {"clipping", "pruning", "quantization", "soteria", "secure_aggregation"}


@dataclass
class Size:
    """One benchmark size: the grid and the attack budgets."""

    name: str
    images: int
    image_size: int
    epochs: list[int]
    local_batches: list[int]
    strengths: int  # how many strengths per defence (from the weakest)
    defences: list[str]
    ig: list[str]  # attack overrides
    gifd: list[str]
    gifd_cells: list[tuple[int, int]]  # (E, b) cells of Table III run with GIFD
    gifd_strengths: list[int]  # indices of the strengths GIFD runs per defence
    left_out: list[str] = field(default_factory=list)


SIZES = {
    "smoke": Size(
        name="smoke", images=2, image_size=16, epochs=[1], local_batches=[1], strengths=1,
        defences=["gaussian_noise", "clipping", "pruning", "soteria", "quantization", "secure_aggregation", "dp_sgd"],
        ig=["attack.iterations=2"],
        gifd=["attack.steps_per_stage=1", "attack.restarts=1"],
        gifd_cells=[(1, 1)], gifd_strengths=[0],
        left_out=["everything but one cell per kind of run: numbers are meaningless"],
    ),
    "default": Size(
        name="default", images=4, image_size=32, epochs=[1, 2], local_batches=[1, 4], strengths=2,
        defences=list(DEFENCES),
        ig=["attack.iterations=480", "attack.restarts=1"],
        gifd=["attack.steps_per_stage=40", "attack.restarts=1"],
        gifd_cells=[(1, 4), (2, 1)], gifd_strengths=[0, 1],
        left_out=[
            "E = 5 and local batch 8 (--full); 4 private images instead of 8, 32 px",
            "IG 480 iterations, 1 restart instead of 4,800 × 4 (24,000 in the survey); GIFD 40 steps per stage,"
            " 1 restart instead of 1,000 × 4",
            "the strongest setting of each defence",
            "GIFD's Table III cells other than (E, b) = (1, 4) and (2, 1)",
        ],
    ),
    "full": Size(
        name="full", images=8, image_size=32, epochs=[1, 2, 5], local_batches=[1, 4, 8], strengths=3,
        defences=list(DEFENCES),
        ig=[], gifd=[],
        gifd_cells=[(e, b) for e in (1, 2, 5) for b in (1, 4, 8)], gifd_strengths=[0, 1, 2],
        left_out=["the survey's 64 images per client and ResNet-18 on CIFAR-100 (not on this machine)"],
    ),
}


@dataclass
class Case:
    part: str
    attack: str
    setting: dict[str, Any]
    overrides: list[str]


def _base(size: Size, attack: str) -> list[str]:
    common = [
        "model=convnet", "model.norm=group", "model.width=0.5", "dataset=lfw", f"image_size={size.image_size}",
        f"batch_size={size.images}", "threat.labels=known", "attack.compile=false", "progress=false",
        "device=cpu", "seed=0",
    ]
    if attack == "ig":
        return [*common, "attack=inverting_gradients", *size.ig]
    return [*common, "attack=gifd", "prior=face-dcgan", *size.gifd]


def fedavg_cases(size: Size, attacks: list[str]) -> list[Case]:
    cases = []
    for attack in attacks:
        cells = [(e, b) for e in size.epochs for b in size.local_batches]
        if attack == "gifd":
            cells = size.gifd_cells
        for epochs, local_batch in cells:
            for sim in SIMULATIONS:
                overrides = [
                    *_base(size, attack), "protocol=fedavg", f"protocol.local_epochs={epochs}",
                    f"protocol.local_batch_size={local_batch}", "protocol.lr=0.01", f"attack.fedavg={sim}",
                ]
                setting = {"E": epochs, "b": local_batch, "simulation": sim}
                cases.append(Case("fedavg", attack, setting, overrides))
    return cases


def defence_cases(size: Size, attacks: list[str]) -> list[Case]:
    cases = []
    for attack in attacks:
        base = _base(size, attack)
        cases.append(Case("defense", attack, {"defense": "none", "strength": "", "adaptive": False}, base))
        for name in size.defences:
            key, strengths, extra = DEFENCES[name]
            chosen = range(size.strengths) if attack == "ig" else [i for i in size.gifd_strengths if i < size.strengths]
            for i in chosen:
                value = strengths[i]
                for adaptive in (False, True) if name in REPLAYABLE else (False,):
                    overrides = [*base, f"defense={name}", f"defense.{name}.{key}={value}", *extra,
                                 f"attack.adaptive={str(adaptive).lower()}"]
                    setting = {"defense": name, "strength": f"{key}={value}", "adaptive": adaptive}
                    cases.append(Case("defense", attack, setting, overrides))
    return cases


def run_case(case: Case) -> dict[str, Any]:
    row: dict[str, Any] = {"part": case.part, "attack": case.attack, **case.setting}
    started = time.perf_counter()
    try:
        result = run(resolve_config(case.overrides), write=False)
    except FedinvertError as err:
        row.update(psnr=None, ssim=None, seconds=time.perf_counter() - started, note=f"error: {err}")
        return row
    m = result.metrics
    info = result.scenario.info
    note = f"eps={info['dp_sgd']['epsilon']:.3g}" if "dp_sgd" in info and info["dp_sgd"]["epsilon"] else ""
    row.update(psnr=m["psnr"], ssim=m["ssim"], seconds=m["seconds"], note=note)
    return row


def gifd_available() -> str | None:
    """None when GIFD and the face-dcgan prior can run here, else why not."""
    from fedinvert.attacks import ATTACKS

    if "gifd" not in ATTACKS:
        return "attack 'gifd' is not registered in this version"
    from fedinvert.priors import PRIORS

    try:
        PRIORS.build("face-dcgan")
    except FedinvertError as err:
        return str(err)
    return None


def print_tables(rows: list[dict[str, Any]]) -> None:
    for attack in ("ig", "gifd"):
        table = [r for r in rows if r["part"] == "fedavg" and r["attack"] == attack]
        if table:
            print(f"\nFedAvg (Table III shape), {attack.upper()}: PSNR / SSIM / seconds")
            print(f"{'E':>2} {'b':>2}  " + "  ".join(f"{s:^22}" for s in SIMULATIONS))
            cells = sorted({(r["E"], r["b"]) for r in table})
            for e, b in cells:
                parts = []
                for sim in SIMULATIONS:
                    r = next((x for x in table if (x["E"], x["b"], x["simulation"]) == (e, b, sim)), None)
                    parts.append(
                        "n/a".center(22) if r is None
                        else f"{fmt(r['psnr'], '5.2f')} / {fmt(r['ssim'], '.3f')} / {r['seconds']:4.0f}s".center(22)
                    )
                print(f"{e:>2} {b:>2}  " + "  ".join(parts))
        table = [r for r in rows if r["part"] == "defense" and r["attack"] == attack]
        if table:
            print(f"\nDefences (FedSGD), {attack.upper()}")
            print(f"{'defence':<19} {'strength':<22} {'adaptive':<8} {'PSNR':>6} {'SSIM':>6} {'s':>5}  note")
            for r in table:
                print(f"{r['defense']:<19} {r['strength']:<22} {('on' if r['adaptive'] else 'off'):<8} "
                      f"{fmt(r['psnr'], '6.2f')} {fmt(r['ssim'], '6.3f')} {r['seconds']:5.0f}  {r['note']}")


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/fl.csv", full_help="the paper-sized grid",
                          smoke_help="one cell of each kind, tiny budgets")
    parser.add_argument("--attacks", default="ig,gifd", help="comma-separated: ig, gifd")
    parser.add_argument("--parts", default="fedavg,defense", help="comma-separated: fedavg, defense")
    args, size_name = parse_sized(parser)
    size = SIZES[size_name]
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    left_out = list(size.left_out)
    if "gifd" in attacks:
        why = gifd_available()
        if why is not None:
            print(f"note: GIFD part skipped: {why}")
            attacks.remove("gifd")
            left_out.append(f"GIFD ({why})")
    cases = []
    if "fedavg" in parts:
        cases += fedavg_cases(size, attacks)
    if "defense" in parts:
        cases += defence_cases(size, attacks)
    print(f"size '{size.name}': {len(cases)} runs; {size.images} LFW images at {size.image_size} px,"
          f" ConvNet-GN(width 0.5), {args.threads} thread(s)")
    started = time.perf_counter()
    rows = []
    for i, case in enumerate(cases, start=1):
        row = run_case(case)
        rows.append(row)
        print(f"[{i}/{len(cases)} {time.perf_counter() - started:5.0f}s] {case.attack} {case.setting}"
              f" psnr={fmt(row['psnr'], '.2f')} {row['note']}", flush=True)
    print_tables(rows)
    fields = ["part", "attack", "E", "b", "simulation", "defense", "strength", "adaptive", "psnr", "ssim",
              "seconds", "note"]
    path = write_csv(rows, args.csv, fields)
    print(f"\nwrote {path} ({len(rows)} rows) in {time.perf_counter() - started:.0f} s")
    print("left out at this size:")
    for item in left_out:
        print(f"  - {item}")


if __name__ == "__main__":
    main()
