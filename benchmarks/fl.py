"""Realistic federated learning against Inverting Gradients and GIFD: FedAvg simulation and defences.

Part 1 (``fedavg``) has the shape of the TPAMI GIA survey's Table III (Guo et al. 2025): a FedAvg client
trains E local epochs with local batch b and shares its weight delta; the attacker unrolls the known local
training (strong), the survey's guess b = 8, E = 2, lr 1e-3 (weak), or treats −Δ/η as one gradient (none).
Part 2 (``defense``) runs FedSGD against each defence, with the adaptive attacker off or on (on replays the
defence's deterministic transform; noise and DP-SGD have none, so they run once).

Each cell runs on ``--batches`` private batches (default 8) of distinct, seeded LFW faces, the same batches
for every cell; each batch has its own victim initialisation and attack seed. A cell reports the mean and
95 % t-interval over its batches of PSNR and of the leakage above the no-leak reference of the same batch (the
best of a constant image, the mean image and random faces), the reference itself and re-identification
top-1; then paired differences on the same batches: every defended cell − the undefended one, adaptive on −
off, strong − none and strong − weak simulation, GIFD − IG. Under secure aggregation a batch is the
attacked client's images followed by the other clients' (drawn from faces in no batch while they last).

    python benchmarks/fl.py            # B = 2, 32 px; IG: FedAvg (E, b) = (2, 1) strong and none; no defence,
                                       # Gaussian noise, pruning, Soteria, secure aggregation (2 clients),
                                       # DP-SGD at their middle strength (adaptive where replayable);
                                       # GIFD without defence: ~20 min on 1 core (IG 1000 steps,
                                       # GIFD 100 a stage: the knees of convergence.py)
    python benchmarks/fl.py --full     # B = 8: E ∈ {1, 2, 5} × b ∈ {1, 4, 8} × 3 simulations, every defence at
                                       # 3 strengths, adaptive off and on, IG and GIFD at the attacks' own
                                       # defaults (GPU-sized)
    python benchmarks/fl.py --smoke    # one cell of each kind, 2 batches, tiny budgets (numbers meaningless)

Every run: ConvNet with GroupNorm (DP-SGD cannot train BatchNorm) at half width, LFW faces, labels known to
the attacker (the survey's setting), local lr 0.01 (the survey's), eager steps (compiling the unrolled
simulation takes minutes here). GIFD uses the face-dcgan prior through the runner (attack=gifd
prior=face-dcgan); it is skipped with a note when the prior cannot be loaded. Writes the cell table
(``--csv``), the paired differences (``*_paired.csv``) and every batch's scores (``*_batches.csv``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from _stats import PAIRED_FIELDS, batch_indices, extend_batches, pair_label, paired, run_cell, summarize
from _tables import companion, parse_sized, print_cells, print_pairs, sized_parser, write_csv

from fedinvert.errors import FedinvertError

SIMULATIONS = ("strong", "weak", "none")
DATASET = "lfw"

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
#: the defences of the default size (at their middle strength); the others fit only --full's time
DEFAULT_DEFENCES = ("gaussian_noise", "pruning", "soteria", "secure_aggregation", "dp_sgd")

#: attack budgets of the default size (overrides): each attack's knee in benchmarks/results/convergence.csv
#: (the smallest budget with >= 80 % of the leakage at the largest budget measured there)
IG_DEFAULT = ["attack.iterations=1000", "attack.restarts=1"]
GIFD_DEFAULT = ["attack.steps_per_stage=100", "attack.restarts=1"]


@dataclass
class Size:
    """One benchmark size: the grid and the attack budgets."""

    name: str
    images: int
    image_size: int
    batches: int
    ig: list[str]  # attack overrides
    gifd: list[str]
    ig_fedavg: list[tuple[int, int, str]]  # (E, b, simulation) cells of Table III run with IG
    gifd_fedavg: list[tuple[int, int, str]]  # (E, b, simulation) cells run with GIFD
    ig_defences: list[tuple[str, int]]  # (defence, index into its strengths) run with IG
    gifd_defences: list[tuple[str, int]]  # (defence, strength index) run with GIFD
    adaptive: tuple[bool, ...]  # adaptive settings for replayable defences
    secagg_clients: int | None = None  # largest client count run (None: all)
    left_out: list[str] = field(default_factory=list)


SIZES = {
    "smoke": Size(
        name="smoke", images=2, image_size=16, batches=2, ig=["attack.iterations=2"],
        gifd=["attack.steps_per_stage=1", "attack.restarts=1"],
        ig_fedavg=[(1, 1, s) for s in SIMULATIONS], gifd_fedavg=[(1, 1, "strong")],
        ig_defences=[(d, 0) for d in DEFENCES],
        gifd_defences=[("gaussian_noise", 0)], adaptive=(False, True),
        left_out=["everything but one cell per kind of run: numbers are meaningless"],
    ),
    "default": Size(
        name="default", images=2, image_size=32, batches=8, ig=IG_DEFAULT, gifd=GIFD_DEFAULT,
        ig_fedavg=[(2, 1, "strong"), (2, 1, "none")], gifd_fedavg=[],
        ig_defences=[(d, 1) for d in DEFAULT_DEFENCES], gifd_defences=[],
        adaptive=(True,), secagg_clients=2,
        left_out=[
            "B = 8 (here 2); FedAvg (E, b) other"
            " than (2, 1) and the weak simulation",
            f"the defences {', '.join(d for d in DEFENCES if d not in DEFAULT_DEFENCES)}; the weakest and"
            " strongest setting of each defence",
            "the non-adaptive attacker on replayable defences (adaptive on is the stronger one)",
            "secure aggregation with 4 or 8 clients (the middle strength, 4, is replaced by 2)",
            "GIFD under any defence and in FedAvg (only its undefended FedSGD cell runs)",
            f"IG {' '.join(IG_DEFAULT)} and GIFD {' '.join(GIFD_DEFAULT)} instead of the attacks' defaults",
        ],
    ),
    "full": Size(
        name="full", images=8, image_size=32, batches=8, ig=[], gifd=[],
        ig_fedavg=[(e, b, s) for e in (1, 2, 5) for b in (1, 4, 8) for s in SIMULATIONS],
        gifd_fedavg=[(e, b, s) for e in (1, 2, 5) for b in (1, 4, 8) for s in SIMULATIONS],
        ig_defences=[(d, i) for d in DEFENCES for i in range(3)],
        gifd_defences=[(d, i) for d in DEFENCES for i in range(3)],
        adaptive=(False, True),
        left_out=["the survey's 64 images per client and ResNet-18 on CIFAR-100 (not on this machine)"],
    ),
}


@dataclass
class Case:
    part: str
    attack: str
    setting: dict[str, Any]
    overrides: list[str]
    clients: int = 1  # secure aggregation: the batch holds this many clients' images


def _base(size: Size, attack: str) -> list[str]:
    common = [
        "model=convnet", "model.norm=group", "model.width=0.5", f"dataset={DATASET}", f"image_size={size.image_size}",
        f"batch_size={size.images}", "threat.labels=known", "attack.compile=false", "progress=false", "device=cpu",
    ]
    if attack == "ig":
        return [*common, "attack=inverting_gradients", *size.ig]
    return [*common, "attack=gifd", "prior=face-dcgan", *size.gifd]


def fedavg_cases(size: Size, attacks: list[str]) -> list[Case]:
    cells: list[tuple[str, int, int, str]] = []
    if "ig" in attacks:
        cells += [("ig", e, b, s) for e, b, s in size.ig_fedavg]
    if "gifd" in attacks:
        cells += [("gifd", e, b, s) for e, b, s in size.gifd_fedavg]
    return [
        Case("fedavg", attack, {"E": e, "b": b, "simulation": sim},
             [*_base(size, attack), "protocol=fedavg", f"protocol.local_epochs={e}", f"protocol.local_batch_size={b}",
              "protocol.lr=0.01", f"attack.fedavg={sim}"])
        for attack, e, b, sim in cells
    ]


def defence_cases(size: Size, attacks: list[str]) -> list[Case]:
    cases = []
    for attack in attacks:
        base = _base(size, attack)
        cases.append(Case("defense", attack, {"defense": "none", "strength": "", "adaptive": False}, base))
        for name, i in size.ig_defences if attack == "ig" else size.gifd_defences:
            key, strengths, extra = DEFENCES[name]
            value = strengths[i]
            if name == "secure_aggregation" and size.secagg_clients is not None:
                value = min(value, size.secagg_clients)
            for adaptive in size.adaptive if name in REPLAYABLE else (False,):
                overrides = [*base, f"defense={name}", f"defense.{name}.{key}={value}", *extra,
                             f"attack.adaptive={str(adaptive).lower()}"]
                setting = {"defense": name, "strength": f"{key}={value}", "adaptive": adaptive}
                clients = int(value) if name == "secure_aggregation" else 1
                cases.append(Case("defense", attack, setting, overrides, clients))
    return cases


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


def label(case: Case) -> str:
    s = case.setting
    if case.part == "fedavg":
        return f"E={s['E']} b={s['b']} {s['simulation']}"
    if s["defense"] == "none":
        return "none"
    return f"{s['defense']} {s['strength']} adaptive={'on' if s['adaptive'] else 'off'}"


def pairs_of(cases: list[Case], results: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The paired differences: defended − none, adaptive on − off, strong − none / weak, GIFD − IG."""
    done = {(c.part, c.attack, label(c)): results[id(c)] for c in cases if id(c) in results}
    wanted: list[tuple[str, str, str, str, str]] = []  # (part, attack a, cell a, attack b, cell b)
    for part, attack, cell in done:
        if part == "defense" and cell != "none":
            wanted.append((part, attack, cell, attack, "none"))
            if cell.endswith("adaptive=on"):
                wanted.append((part, attack, cell, attack, cell.replace("adaptive=on", "adaptive=off")))
        if part == "fedavg" and cell.endswith(" strong"):
            for other in ("none", "weak"):
                wanted.append((part, attack, cell, attack, cell.replace(" strong", f" {other}")))
        if attack == "gifd":
            wanted.append((part, "gifd", cell, "ig", cell))
    pairs = []
    for part, attack_a, cell_a, attack_b, cell_b in wanted:
        a, b = done.get((part, attack_a, cell_a)), done.get((part, attack_b, cell_b))
        if a and b:
            name = pair_label(f"{attack_a} {cell_a}", f"{attack_b} {cell_b}")
            # leakage, not PSNR: a secure-aggregation batch holds more images, so its reference differs
            pairs.append({"part": part, "difference": name, **paired(a, b, key="leakage_db")})
    return pairs


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/fl.csv",
                          full_help="B = 8, E × b ∈ {1, 2, 5} × {1, 4, 8}, 3 strengths, adaptive off/on, attack defaults",
                          smoke_help="one cell of each kind, 2 batches, tiny budgets")
    parser.add_argument("--batches", type=int, default=None, help="private batches per cell (default 8; smoke 2)")
    parser.add_argument("--attacks", default="ig,gifd", help="comma-separated: ig, gifd")
    parser.add_argument("--parts", default="fedavg,defense", help="comma-separated: fedavg, defense")
    parser.add_argument("--seed", type=int, default=0, help="seeds the batch layout; batch k runs with seed+k")
    args, size_name = parse_sized(parser)
    size = SIZES[size_name]
    n_batches = args.batches or size.batches
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
    layout = batch_indices(DATASET, n_batches=n_batches, per_batch=size.images, seed=args.seed)
    print(f"fl '{size.name}': {len(cases)} cells × {n_batches} batches; {size.images} LFW images at"
          f" {size.image_size} px, ConvNet-GN(width 0.5), {args.threads} thread(s)", flush=True)
    started = time.perf_counter()
    cells: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    results: dict[int, list[dict[str, Any]]] = {}
    for i, case in enumerate(cases, start=1):
        labels = {"part": case.part, "attack": case.attack, "cell": label(case)}

        def progress(row: dict[str, Any], i: int = i, labels: dict[str, Any] = labels) -> None:
            print(f"[{i}/{len(cases)} {time.perf_counter() - started:5.0f}s] {labels['attack']} {labels['cell']}"
                  f" batch {row['batch'] + 1}/{n_batches}: psnr {row['psnr']:.2f} (reference"
                  f" {row['reference_psnr']:.2f}, leak {row['leakage_db']:+.2f}) {row.get('note', '')}", flush=True)

        def dp_note(result: Any, _: int) -> dict[str, Any]:
            dp = result.scenario.info.get("dp_sgd")
            return {"note": f"eps={dp['epsilon']:.3g}" if dp and dp.get("epsilon") else ""}

        try:
            batches = (layout if case.clients == 1 else
                       extend_batches(DATASET, layout, (case.clients - 1) * size.images, seed=args.seed))
            rows = run_cell(case.overrides, batches, seed=args.seed, extra=dp_note, on_batch=progress)
        except FedinvertError as err:
            cells.append({**labels, **case.setting, "note": f"error: {err}"})
            print(f"[{i}/{len(cases)}] {labels['attack']} {labels['cell']}: error: {err}", flush=True)
            continue
        results[id(case)] = rows
        cells.append({**labels, **case.setting, **summarize(rows), "note": rows[-1]["note"]})
        raw.extend({**labels, **r} for r in rows)
    pairs = pairs_of(cases, results)

    for part, title in (("fedavg", "FedAvg (Table III shape)"), ("defense", "Defences (FedSGD)")):
        table = [c for c in cells if c["part"] == part]
        if table:
            print(f"\n{title}: mean ± 95 % interval over {n_batches} private batches; ref = no-leak reference PSNR")
            print_cells(table, ("attack", "cell"))
    if pairs:
        print("\nPaired differences in leakage on the same batches (a − b; the PSNR difference where both cells"
              " ran the same images)")
        print_pairs(pairs, ("part",))
    fields = ["part", "attack", "cell", "E", "b", "simulation", "defense", "strength", "adaptive", "n_batches",
              "psnr_mean", "psnr_ci95", "ssim_mean", "reference_psnr", "leakage_db", "leakage_ci95", "reid_top1",
              "st_lpips", "seconds_mean", "verdict", "note"]
    if args.csv and cells:
        print(f"\nwrote {write_csv(cells, args.csv, fields, digits=4)}, {write_csv(pairs, companion(args.csv, 'paired'), ['part', 'difference', *PAIRED_FIELDS], digits=4)}"
              f" and {write_csv(raw, companion(args.csv, 'batches'), digits=4)}")
    print(f"{len(cases)} cells in {time.perf_counter() - started:.0f} s")
    print("left out at this size:")
    for item in left_out:
        print(f"  - {item}")


if __name__ == "__main__":
    main()
