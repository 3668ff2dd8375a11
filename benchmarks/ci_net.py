"""CI-Net against the victim's activation: the TPAMI GIA survey's finding that optimising an untrained
generator's parameters recovers images from a sigmoid victim and fails on a ReLU one.

DLG's LeNet (``lenet-dlg``, U(−0.5, 0.5) weights) with sigmoids and the same network with ReLUs
(``model.activation=relu``), Fashion-MNIST 28 px, FedSGD, B = 1, labels inferred (iDLG), 8 private images a
cell; CI-Net at its default budget (2000 Adam steps, lr 1e-3, one restart) and Inverting Gradients at the same
2000 gradient evaluations beside it. Paired differences on the same images: sigmoid − ReLU per attack, and
CI-Net − IG per activation.

    python benchmarks/ci_net.py --threads 1     # 4 cells × 8 images: ~25 min on one core
    python benchmarks/ci_net.py --full          # B = 1 and 4, 16 images a cell
    python benchmarks/ci_net.py --smoke         # every path: 2 images, 20 steps
"""

from __future__ import annotations

import sys
import time

from _stats import PAIRED_FIELDS, batch_indices, pair_label, paired, run_cell, summarize
from _tables import companion, parse_sized, print_cells, print_pairs, sized_parser, write_csv

ACTIVATIONS = ("sigmoid", "relu")
ATTACKS = {"ci_net": "attack.steps", "inverting_gradients": "attack.iterations"}
SIZES = {"default": {"batches": 8, "budget": 2000, "sizes": (1,)},
         "full": {"batches": 16, "budget": 2000, "sizes": (1, 4)},
         "smoke": {"batches": 2, "budget": 20, "sizes": (1,)}}
CELL_FIELDS = ["B", "activation", "attack", "budget", "n_batches", "psnr_mean", "psnr_ci95", "ssim_mean",
               "reference_psnr", "leakage_db", "leakage_ci95", "reid_top1", "label_accuracy", "seconds_mean", "verdict"]


def main() -> int:
    parser = sized_parser(__doc__.split("\n\n")[0], csv="benchmarks/results/ci_net.csv",
                          full_help="B = 1 and 4, 16 images a cell", smoke_help="2 images, 20 steps")
    parser.add_argument("--seed", type=int, default=0)
    args, size = parse_sized(parser)
    setting = SIZES[size]
    budget = setting["budget"]
    start = time.perf_counter()
    cells, pairs, raw = [], [], []
    print(f"ci_net '{size}': {len(ACTIVATIONS) * len(ATTACKS)} cells × {setting['batches']} images, budget {budget},"
          f" {args.threads} thread(s)")
    for batch_size in setting["sizes"]:
        layout = batch_indices("fashion-mnist", n_batches=setting["batches"], per_batch=batch_size, seed=args.seed,
                               unique_labels=True)
        rows: dict[tuple[str, str], list] = {}
        for activation in ACTIVATIONS:
            for attack, key in ATTACKS.items():
                overrides = ["dataset=fashion-mnist", "image_size=28", f"batch_size={batch_size}", "model=lenet-dlg",
                             f"model.activation={activation}", f"attack={attack}", f"{key}={budget}", "attack.restarts=1",
                             "attack.compile=false", "device=cpu", "progress=false", "metrics.st_lpips=false"]
                got = run_cell(overrides, layout, seed=args.seed)
                rows[(activation, attack)] = got
                cell = {"B": batch_size, "activation": activation, "attack": attack, "budget": budget, **summarize(got)}
                cells.append(cell)
                raw.extend({"B": batch_size, "activation": activation, "attack": attack, **r} for r in got)
                print(f"[{time.perf_counter() - start:6.0f}s] B={batch_size} {activation:7s} {attack:20s} PSNR"
                      f" {cell['psnr_mean']:.2f} ± {cell['psnr_ci95']:.2f} (ref {cell['reference_psnr']:.2f},"
                      f" leak {cell['leakage_db']:+.2f} ± {cell['leakage_ci95']:.2f})", flush=True)
        for attack in ATTACKS:
            pairs.append({"B": batch_size, "difference": pair_label(f"{attack} sigmoid", f"{attack} relu"),
                          **paired(rows[("sigmoid", attack)], rows[("relu", attack)])})
        for activation in ACTIVATIONS:
            pairs.append({"B": batch_size, "difference": pair_label(f"ci_net {activation}", f"IG {activation}"),
                          **paired(rows[(activation, "ci_net")], rows[(activation, "inverting_gradients")])})
    print()
    print_cells(cells, ("B", "activation", "attack"))
    print("\nPaired differences in PSNR on the same images (a − b)")
    print_pairs(pairs, ("B",))
    print(f"\nwrote {write_csv(cells, args.csv, CELL_FIELDS, digits=4)},"
          f" {write_csv(pairs, companion(args.csv, 'paired'), ['B', 'difference', *PAIRED_FIELDS], digits=4)}"
          f" and {write_csv(raw, companion(args.csv, 'batches'), digits=4)}")
    print(f"{time.perf_counter() - start:.0f} s in all")
    if size == "default":
        print("left out at this size (--full runs them): B = 4; 16 images a cell")
    return 0


if __name__ == "__main__":
    sys.exit(main())
