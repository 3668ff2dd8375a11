"""Leakage over the rounds of a real Flower federation: the model trains; how much do its clients' updates leak?

A Flower FedAvg federation (``examples/flower_fashion.py``: Flower's own strategy, ClientApp and messages, run
in process) of ``--clients`` clients, each holding ``--images`` Fashion-MNIST train images (disjoint, seeded)
and running one local epoch of SGD on them each round (batch = partition, lr ``--lr``), trains the sigmoid LeNet
(``lenet-dlg``, 28 px) for the largest measured round. The server wraps its strategy in
`fedinvert.flower.CapturingStrategy`; at each measured round, Inverting Gradients (``--iterations``, its
default recipe, local hyper-parameters reported by the clients) attacks every client's captured update, scored
against that client's partition and its no-leak reference. Each client is one private batch, the same at
every round, so rounds pair client by client (round r − round 1). Flower's server-side evaluation gives the
global model's accuracy on 1000 Fashion-MNIST test images after each measured round.

    python benchmarks/flower_rounds.py --threads 1         # 8 clients, rounds 1-50: ~10 min on one core
    python benchmarks/flower_rounds.py --full              # 16 clients, rounds up to 200
    python benchmarks/flower_rounds.py --smoke             # 2 clients, rounds 1-2, 20 iterations

Writes ``benchmarks/results/flower_rounds.csv`` (one row per round), ``_batches.csv`` (per client and round),
``_paired.csv`` (round r − round 1) and the plot ``flower_rounds.png``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _stats import fmt_interval, paired, summarize
from _tables import companion, parse_sized, sized_parser, write_csv

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower_fashion.py"

SIZES = {
    "default": {"clients": 8, "rounds": (1, 2, 5, 10, 20, 50)},
    "full": {"clients": 16, "rounds": (1, 2, 5, 10, 20, 50, 100, 200)},
    "smoke": {"clients": 2, "rounds": (1, 2)},
}


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("flower_fashion", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["flower_fashion"] = module
    spec.loader.exec_module(module)
    return module


def accuracy_fn(example: Any, count: int = 1000) -> tuple[Any, dict[int, float]]:
    """Flower's ``evaluate_fn``: the global model's accuracy on ``count`` test images, kept per round."""
    from flwr.app import MetricRecord

    from fedinvert.data import FashionMNIST

    test = FashionMNIST().take(range(count), split="test")
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in example.NORMALIZATION)
    inputs = (test.images - mean) / std
    seen: dict[int, float] = {}

    def evaluate(server_round: int, arrays: Any) -> Any:
        model = example.honest_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            seen[server_round] = float((model(inputs).argmax(1) == test.labels).float().mean())
        return MetricRecord({"accuracy": seen[server_round]})

    return evaluate, seen


def main() -> int:
    parser = sized_parser(__doc__.split("\n\n")[0], csv="benchmarks/results/flower_rounds.csv",
                          full_help="16 clients, rounds up to 200", smoke_help="2 clients, rounds 1-2, 20 iterations")
    parser.add_argument("--images", type=int, default=4, help="images per client (its private batch; default 4)")
    parser.add_argument("--lr", type=float, default=0.1, help="the clients' local learning rate (default 0.1)")
    parser.add_argument("--iterations", type=int, default=None, help="IG iterations (default 1000, its knee)")
    parser.add_argument("--plot", default="benchmarks/results/flower_rounds.png")
    parser.add_argument("--seed", type=int, default=0)
    args, size = parse_sized(parser)
    setting = SIZES[size]
    iterations = args.iterations or (20 if size == "smoke" else 1000)
    rounds = setting["rounds"]
    example = load_example()
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower's per-round INFO lines
    from fedinvert.flower import attach_private, read_capture

    parts = example.partitions(setting["clients"], args.images, seed=args.seed)
    local = {"local-epochs": 1, "batch-size": args.images, "lr": args.lr}
    print(f"flower_rounds '{size}': {len(parts)} clients × {args.images} images, FedAvg lr {args.lr}, "
          f"rounds {', '.join(map(str, rounds))}, IG {iterations} iterations, {args.threads} thread(s)")
    start = time.perf_counter()
    evaluate, accuracy = accuracy_fn(example)
    with tempfile.TemporaryDirectory(prefix="flower_rounds_") as scratch:
        out = Path(scratch) / "capture"
        example.federate(out, parts, rounds=max(rounds), local=local, evaluate_fn=evaluate, seed=args.seed)
        entries = [e for e in read_capture(out) if e["status"] == "captured"]
        print(f"[{time.perf_counter() - start:7.0f}s] federation: {len(entries)} updates captured")
        rows_by_round: dict[int, list[dict[str, Any]]] = {}
        for r in rounds:
            rows = []
            for entry in sorted((e for e in entries if e["round"] == r), key=lambda e: e["metrics"]["partition-id"]):
                client = int(entry["metrics"]["partition-id"])
                indices, part = parts[client]
                folder = out / entry["path"]
                attach_private(folder, part.images, part.labels, indices=indices)
                m = example.attack_capture(folder, iterations=iterations, seed=args.seed + client)
                rows.append({"round": r, "batch": client, "seed": args.seed + client,
                             "indices": " ".join(map(str, indices)), "psnr": m["psnr"], "ssim": m["ssim"],
                             "reference_psnr": m["reference"]["psnr"], "leakage_db": m["leakage_db"],
                             "reid_top1": m["reid_top1"], "label_accuracy": m["label_accuracy"],
                             "seconds": m["seconds"], "update_norm": entry["update_norm"],
                             "train_loss": entry["metrics"].get("train-loss")})
            rows_by_round[r] = rows
            cell = summarize(rows, means=("update_norm", "train_loss"))
            print(f"[{time.perf_counter() - start:7.0f}s] round {r:4d}  test accuracy {accuracy.get(r, float('nan')):.3f}  "
                  f"PSNR {fmt_interval(cell['psnr_mean'], cell['psnr_ci95'])}  reference {cell['reference_psnr']:.2f}  "
                  f"leakage {fmt_interval(cell['leakage_db'], cell['leakage_ci95'])}  re-id {cell['reid_top1']:.2f}  "
                  f"update norm {cell['update_norm']:.4f}  {cell['verdict']}")

    cells, pairs = [], []
    for r in rounds:
        cell = {"round": r, "test_accuracy": accuracy.get(r), **summarize(rows_by_round[r], means=("update_norm", "train_loss"))}
        cells.append(cell)
        if r != rounds[0]:
            for key in ("leakage_db", "psnr"):
                pairs.append({"pair": f"round {r} − round {rounds[0]}", **paired(rows_by_round[r], rows_by_round[rounds[0]], key)})
    write_csv(cells, args.csv, digits=4)
    write_csv([row for r in rounds for row in rows_by_round[r]], companion(args.csv, "batches"), digits=4)
    write_csv(pairs, companion(args.csv, "paired"), digits=4)
    print("\npaired over the same clients:")
    for p in pairs:
        print(f"  {p['pair']:22s} {p['key']:10s} {fmt_interval(p['diff_mean'], p['diff_ci95'])} dB"
              f"{'' if p['excludes_zero'] else '  (interval includes 0)'}")
    plot(cells, args.plot, title=f"{len(parts)} Flower clients × {args.images} Fashion-MNIST images, FedAvg lr {args.lr}")
    print(f"\nwrote {args.csv}, its _batches and _paired files, and {args.plot} ({time.perf_counter() - start:.0f} s)")
    return 0


def plot(cells: list[dict[str, Any]], path: str, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [c["round"] for c in cells]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.errorbar(x, [c["leakage_db"] for c in cells], yerr=[c["leakage_ci95"] for c in cells], marker="o",
                capsize=3, label="IG leakage over the no-leak reference (dB, mean ± 95 %)")
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("FedAvg round")
    ax.set_ylabel("leakage (dB)")
    twin = ax.twinx()
    twin.plot(x, [c["test_accuracy"] for c in cells], color="tab:orange", marker="s", label="global test accuracy")
    twin.set_ylabel("test accuracy")
    twin.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
