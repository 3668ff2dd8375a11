"""LTI (learning to invert) against its auxiliary data and the batch size.

DLG's sigmoid LeNet (``lenet-dlg``), Fashion-MNIST 28 px private batches from the test split, FedSGD, labels
inferred, 8 private batches a cell (each with its own victim, so each run trains its own inversion model).
Auxiliary data from the same domain (Fashion-MNIST's train split, the attacker's public data) against another
domain (scikit-learn's handwritten digits, resized), at LTI's defaults (2000 auxiliary batches, sketch 2048,
MLP 1000 wide, 30 epochs). Paired differences on the same batches: same − other domain, B = 1 − B = 4.

    python benchmarks/lti.py --threads 1     # B = 1 both domains, B = 4 same domain: ~20 min on one core
    python benchmarks/lti.py --full          # adds B = 4 from the other domain, 16 batches a cell
    python benchmarks/lti.py --smoke         # every path: 2 batches, 20 auxiliary batches, 2 epochs
    python benchmarks/lti.py --shared --csv benchmarks/results/lti_shared.csv
                                             # B = 4 with 0, 2, 3, 4 images sharing one label: ~20 min

The survey reports, on CIFAR-10 at B = 4 with 0 / 2 / 3 / 4 images sharing a label, 21.7 / 18.8 / 16.8 / 12.1 dB.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from _stats import PAIRED_FIELDS, batch_indices, pair_label, paired, run_cell, summarize
from _tables import companion, parse_sized, print_cells, print_pairs, sized_parser, write_csv

AUX = {"same": "fashion-mnist", "other": "digits"}
SIZES = {"default": {"batches": 8, "cells": ((1, "same"), (1, "other"), (4, "same")), "train": ()},
         "full": {"batches": 16, "cells": ((1, "same"), (1, "other"), (4, "same"), (4, "other")), "train": ()},
         "smoke": {"batches": 2, "cells": ((1, "same"), (1, "other"), (4, "same")),
                   "train": ("attack.aux_batches=20", "attack.epochs=2", "attack.hidden=32", "attack.sketch=64")}}
CELL_FIELDS = ["B", "aux", "n_batches", "psnr_mean", "psnr_ci95", "ssim_mean", "reference_psnr", "leakage_db",
               "leakage_ci95", "reid_top1", "label_accuracy", "seconds_mean", "verdict"]


def main() -> int:
    parser = sized_parser(__doc__.split("\n\n")[0], csv="benchmarks/results/lti.csv",
                          full_help="B = 1 and 4 from both domains, 16 batches a cell",
                          smoke_help="2 batches, 20 auxiliary batches, 2 epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", action="store_true",
                        help="B = 4, same-domain auxiliary data, 0/2/3/4 images of a batch sharing one label")
    args, size = parse_sized(parser)
    if args.shared:
        return shared_labels(args, size)
    setting = SIZES[size]
    os.environ.setdefault("FEDINVERT_CACHE", tempfile.mkdtemp(prefix="lti_cache_"))  # every victim is new
    start = time.perf_counter()
    print(f"lti '{size}': {len(setting['cells'])} cells × {setting['batches']} batches, {args.threads} thread(s)")
    layouts = {b: batch_indices("fashion-mnist", n_batches=setting["batches"], per_batch=b, seed=args.seed,
                                unique_labels=True, stride=4) for b in (1, 4)}
    cells, raw, rows = [], [], {}
    for batch_size, aux in setting["cells"]:
        overrides = ["dataset=fashion-mnist", "image_size=28", f"batch_size={batch_size}", "model=lenet-dlg",
                     "attack=lti", f"attack.aux={AUX[aux]}", *setting["train"], "device=cpu", "progress=false",
                     "metrics.st_lpips=false"]
        got = run_cell(overrides, layouts[batch_size], seed=args.seed)
        rows[(batch_size, aux)] = got
        cell = {"B": batch_size, "aux": f"{aux} ({AUX[aux]})", **summarize(got)}
        cells.append(cell)
        raw.extend({"B": batch_size, "aux": aux, **r} for r in got)
        print(f"[{time.perf_counter() - start:6.0f}s] B={batch_size} aux {aux:5s} PSNR {cell['psnr_mean']:.2f} ±"
              f" {cell['psnr_ci95']:.2f} (ref {cell['reference_psnr']:.2f}, leak {cell['leakage_db']:+.2f} ±"
              f" {cell['leakage_ci95']:.2f})", flush=True)
    pairs = []
    for b in (1, 4):
        if (b, "same") in rows and (b, "other") in rows:
            pairs.append({"difference": pair_label(f"B={b} same", f"B={b} other"),
                          **paired(rows[(b, "same")], rows[(b, "other")], "leakage_db")})
    if (1, "same") in rows and (4, "same") in rows:  # B = 1 batches are the first image of the B = 4 ones
        pairs.append({"difference": pair_label("B=1 same", "B=4 same"),
                      **paired(rows[(1, "same")], rows[(4, "same")], "leakage_db")})
    print()
    print_cells(cells, ("B", "aux"))
    print("\nPaired differences in leakage on the same batches (a − b)")
    print_pairs(pairs, ())
    print(f"\nwrote {write_csv(cells, args.csv, CELL_FIELDS, digits=4)},"
          f" {write_csv(pairs, companion(args.csv, 'paired'), ['difference', *PAIRED_FIELDS], digits=4)}"
          f" and {write_csv(raw, companion(args.csv, 'batches'), digits=4)}")
    print(f"{time.perf_counter() - start:.0f} s in all")
    if size == "default":
        print("left out at this size (--full runs them): B = 4 with other-domain auxiliary data; 16 batches a cell;"
              " batches with shared labels")
    return 0


def shared_layout(n_batches: int, shared: int, seed: int) -> list[list[int]]:
    """B = 4 batches of Fashion-MNIST's test split: ``shared`` images of one label, the rest of distinct others
    (``shared`` = 0: four distinct labels). Batch k draws label k mod 10 as the shared one."""
    import numpy as np

    from fedinvert.data import FashionMNIST

    labels = FashionMNIST().labels(split="test")
    rng = np.random.default_rng(seed)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in range(10)}
    batches = []
    for k in range(n_batches):
        main = k % 10
        others = [c for c in rng.permutation(10) if c != main]
        classes = [main] * shared + others[: 4 - shared] if shared else [main, *others[:3]]
        batches.append([int(pools[c].pop()) for c in classes])
    return batches


def shared_labels(args, size: str) -> int:
    setting = SIZES[size]
    os.environ.setdefault("FEDINVERT_CACHE", tempfile.mkdtemp(prefix="lti_cache_"))
    start = time.perf_counter()
    cells, raw, rows = [], [], {}
    for shared in (0, 2, 3, 4):
        layout = shared_layout(setting["batches"], shared, args.seed)
        overrides = ["dataset=fashion-mnist", "image_size=28", "batch_size=4", "model=lenet-dlg", "attack=lti",
                     *setting["train"], "device=cpu", "progress=false", "metrics.st_lpips=false"]
        got = run_cell(overrides, layout, seed=args.seed)
        rows[shared] = got
        cell = {"B": 4, "aux": f"same, {shared} sharing a label", **summarize(got)}
        cells.append(cell)
        raw.extend({"shared": shared, **r} for r in got)
        print(f"[{time.perf_counter() - start:6.0f}s] {shared} sharing: PSNR {cell['psnr_mean']:.2f} ±"
              f" {cell['psnr_ci95']:.2f} (ref {cell['reference_psnr']:.2f}, leak {cell['leakage_db']:+.2f} ±"
              f" {cell['leakage_ci95']:.2f}, labels {cell['label_accuracy']:.2f})", flush=True)
    print()
    print_cells(cells, ("B", "aux"))
    print("\n(different batches in each cell, same victims' seeds: no paired differences)")
    print(f"\nwrote {write_csv(cells, args.csv, CELL_FIELDS, digits=4)} and"
          f" {write_csv(raw, companion(args.csv, 'batches'), digits=4)}")
    print(f"{time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
