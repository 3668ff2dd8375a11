"""Inverting Gradients: milliseconds per iteration of fedinvert against a bare PyTorch loop, measured in one run.

The bare loop is what research code does: forward, cross-entropy, `autograd.grad(create_graph=True)`, one
global cosine over all parameter gradients plus TV, backward to the dummy image, signed Adam, box clamp.
fedinvert runs the same computation through `InvertingGradients` (eager autograd and the compiled
functional step). Compilation time is reported apart; ms/iteration is the marginal cost of one more iteration (a short and a
long run differenced), so fixed per-run costs cancel for every column.

    python benchmarks/speed.py                  # lenet-dlg and convnet, B = 1 and 8, 32x32 (≈ 10 min here)
    python benchmarks/speed.py --iterations 400 --full   # adds resnet18 at B = 1, 8 and 32
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _tables import write_csv

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.objectives import total_variation
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation


def bare_loop(model, target, labels, shape, *, iterations: int, tv: float = 1e-4) -> float:
    """Seconds per iteration of the plain eager loop (no fedinvert code)."""
    params = [p for p in model.parameters()]
    x = torch.randn(shape, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)
    tnorm = torch.sqrt(sum((t * t).sum() for t in target))
    for it in range(iterations + 5):
        if it == 5:
            start = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
        gnorm = torch.sqrt(sum((g * g).sum() for g in grads))
        rec = 1 - dot / (gnorm * tnorm) + tv * total_variation(x)
        (gx,) = torch.autograd.grad(rec, [x])
        x.grad = gx.sign()
        opt.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
    return (time.perf_counter() - start) / iterations


def fedinvert_loop(obs, *, iterations: int, compile: bool) -> tuple[float, float]:
    """(seconds per iteration, compile seconds) of `InvertingGradients` on the same observation.

    After a discarded warm-up run: two runs, a short one and one ``iterations`` longer; their time difference over ``iterations`` is the cost
    of one more iteration, so the fixed costs of a run (copying the victim, evaluation, compilation) cancel.
    """

    def timed(n: int) -> tuple[float, float]:
        attack = ATTACKS.build(
            "inverting_gradients", iterations=n, restarts=1, compile=compile, device="cpu", log_every=n
        )
        start = time.perf_counter()
        rec = attack.reconstruct(obs, rng=torch.Generator().manual_seed(0))
        compile_seconds = float(rec.extras.get("compile_seconds", 0.0))
        return time.perf_counter() - start - compile_seconds, compile_seconds

    warm = max(10, iterations // 4)
    _, compile_seconds = timed(warm)  # the first run pays for compilation and warm-up; discarded
    short, _ = timed(warm)
    long, _ = timed(warm + iterations)
    return (long - short) / iterations, compile_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--full", action="store_true", help="add resnet18 and batch 32")
    parser.add_argument("--csv", default="benchmarks/results/speed.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = [("lenet-dlg", 1), ("lenet-dlg", 8), ("convnet", 1), ("convnet", 8)]
    if args.full:
        grid += [("convnet", 32), ("resnet18", 1), ("resnet18", 8), ("resnet18", 32)]
    else:
        print("left out (use --full): convnet B=32, resnet18 B=1/8/32")
    rows = []
    header = f"{'model':<10} {'B':>3} {'bare ms':>9} {'eager ms':>9} {'compiled ms':>12} {'compile s':>10} {'eager/bare':>10} {'compiled/bare':>13}"
    print(f"Inverting Gradients, 32x32x3, {args.iterations} iterations, {args.threads} threads, torch {torch.__version__}")
    print(header)
    for name, batch in grid:
        model = build_model(name, in_channels=3, num_classes=10, image_size=32, seed=0).eval()
        x = torch.rand(batch, 3, 32, 32) * 2 - 1
        labels = torch.arange(batch) % 10
        update = FedSGDClient(mode="eval").update(model, x, labels)
        obs = Observation(model=model, update=update, kind="gradient", image_shape=(3, 32, 32), num_classes=10,
                          normalization=((0.5,) * 3, (0.5,) * 3), batch_size=batch, labels=labels)
        target = [update[n] for n, _ in model.named_parameters()]
        bare = bare_loop(model, target, labels, (batch, 3, 32, 32), iterations=args.iterations)
        eager, _ = fedinvert_loop(obs, iterations=args.iterations, compile=False)
        compiled, compile_s = fedinvert_loop(obs, iterations=args.iterations, compile=True)
        row = {"model": name, "batch": batch, "bare_ms": bare * 1e3, "eager_ms": eager * 1e3,
               "compiled_ms": compiled * 1e3, "compile_s": compile_s,
               "eager_over_bare": eager / bare, "compiled_over_bare": compiled / bare}
        rows.append(row)
        print(f"{name:<10} {batch:>3} {row['bare_ms']:>9.2f} {row['eager_ms']:>9.2f} {row['compiled_ms']:>12.2f}"
              f" {compile_s:>10.1f} {row['eager_over_bare']:>10.2f} {row['compiled_over_bare']:>13.2f}")
    path = write_csv(rows, args.csv)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
