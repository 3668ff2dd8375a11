"""Independent private batches as one batch through the victim, against one run after another.

A study's replicates are private batches of one shape, each with its own victim weights (its seed) and its own
observed gradient. ``fedinvert sweep --batch N`` runs N of them as chains of one step, vmapped or grouped
(`fedinvert.attacks.objectives.BatchedMatcher`). Printed per victim (B = 1, 32 px, one restart each): ms of one
eager step of one private batch (what a separate run pays), ms of the batched step of N of them in each form,
and the ratio; N separate runs cost N × the first. With ``--compiled``, the same with both steps compiled.

    OMP_NUM_THREADS=1 python benchmarks/batched_batches.py --threads 1 --compiled lenet-dlg convnet resnet18
"""

from __future__ import annotations

import argparse
import time

import torch

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.objectives import BatchedMatcher
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation

STEPS = {"lenet-dlg": 200, "convnet": 40, "resnet18": 6}


def observation(name: str, seed: int, batch: int) -> Observation:
    """Victim weights from ``seed``, a private batch of ``batch`` random images, its true gradient."""
    model = build_model(name, in_channels=3, num_classes=10, image_size=32, seed=seed).eval()
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (batch,), generator=g)
    return Observation(model=model, update=FedSGDClient(mode="eval").update(model, x, labels), kind="gradient",
                       image_shape=(3, 32, 32), num_classes=10, normalization=((0.5,) * 3, (0.5,) * 3),
                       batch_size=batch, labels=labels)


def per_step(step, x: torch.Tensor, steps: int, device: str = "cpu") -> float:
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(2):
        step([x])
    best = float("inf")
    for _ in range(3):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step([x])
        sync()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def table(victims: list[str], *, batches: int = 4, batch_size: int = 1, compiled: bool = False,
          device: str = "cpu") -> list[dict]:
    """The rows `main` prints, also for `speed.py`'s ``batches`` section (on the GPU there)."""
    attack = ATTACKS.build("inverting_gradients", iterations=10, device=device)
    n, b = batches, batch_size
    print(f"{n} private batches, B = {b}, 32 px, one restart each; best of 3 timings, ms a step (compiled: after"
          " the first call, which compiles)")
    print(f"  {'victim':10s} {'form':9s} {'one batch':>10s} {f'{n} batched':>11s} {'ratio':>6s} {f'{n} separate':>12s}")
    rows = []
    for name in victims:
        observations = [observation(name, seed, b) for seed in range(n)]
        labels = [obs.labels for obs in observations]
        x = torch.randn(n, b, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
        matchers = [attack.make_matcher(o, y, form="vmap") for o, y in zip(observations, labels, strict=True)]
        eager_one = None
        for form in ("vmapped", "grouped", "compiled") if compiled else ("vmapped", "grouped"):
            compile_step = form == "compiled"
            if compile_step or eager_one is None:
                alone = attack.make_matcher(observations[0], labels[0], form="compiled" if compile_step else "eager")
                one = per_step(alone.step, x[:1], STEPS.get(name, 20), device)
                eager_one = eager_one if compile_step else one
            else:
                one = eager_one
            batched = BatchedMatcher(matchers, labels, restarts=1, distance=attack.distance,
                                     regularizer=attack.regularizer(observations[0]), compile=compile_step,
                                     grouped=form == "grouped")
            together = per_step(batched.step, x, STEPS.get(name, 20), device)
            print(f"  {name:10s} {form:9s} {1000 * one:10.2f} {1000 * together:11.2f} {together / one:6.2f}"
                  f" {1000 * n * one:12.2f}", flush=True)
            rows.append({"model": name, "form": form, "batches": n, "one_ms": 1000 * one,
                         "batched_ms": 1000 * together, "ratio": together / one})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("victims", nargs="+")
    parser.add_argument("--batches", type=int, default=4, help="private batches run together (4)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compiled", action="store_true", help="also both compiled (each compiles first)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table(args.victims, batches=args.batches, batch_size=args.batch_size, compiled=args.compiled, device=args.device)


if __name__ == "__main__":
    main()
