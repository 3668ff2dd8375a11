"""Class fishing against the survey's findings: independent of the batch size, worse at higher resolution, worse
on an untrained than on a trained model.

    OMP_NUM_THREADS=1 python benchmarks/fishing.py [--batches 16 32 64] [--sizes 28 56] [--repeats 8]
                                                   [--train-steps 400] [--iterations 1000] [--csv FILE]

Fashion-MNIST test images; each private batch holds one image of the target class 0 and B − 1 images of the
other classes (Wen et al. fish a class that occurs once, as in ImageNet batches); batch k uses target image k.
Victim: the half-width ReLU ConvNet, untrained (seed k) or trained on the train split for ``--train-steps`` SGD
steps (batch 64) at the same resolution; FedSGD in eval mode. The server sends `Fishing`'s classifier
(magnitude 10) and inverts the isolated sample with Inverting Gradients (``--iterations`` steps, one restart).
Scored: the PSNR of the fished image against the target image and its leakage over that image's no-leak
reference (`no_leak_reference` from 1000 train images), mean ± 95 % over the batches; "B = 1" is the same
attack on the target image alone through the unmodified model (what fishing tries to reach). Paired
differences on the same target images: trained − untrained, B = max − B = min, larger − smaller resolution.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from _stats import t_interval
from _tables import write_csv

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.base import ServerContext
from fedinvert.data import load_batch
from fedinvert.fl import FedSGDClient
from fedinvert.metrics import no_leak_reference, psnr_per_image
from fedinvert.models import build_model
from fedinvert.observation import Observation

NORM = ((0.2860,), (0.3530,))
TARGET = 0


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - NORM[0][0]) / NORM[1][0]


def train(size: int, steps: int, pool: Any, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """A ConvNet trained on Fashion-MNIST train images at ``size`` px, and its accuracy on 1000 test images."""
    model = build_model("convnet", in_channels=1, num_classes=10, image_size=size, seed=seed, width=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(pool.images), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(normalise(pool.images[idx])), pool.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = load_batch("fashion-mnist", batch_size=1000, indices=list(range(9000, 10000)), split="test",
                      image_size=size, channels=1)
    with torch.no_grad():
        accuracy = float((model(normalise(test.images)).argmax(1) == test.labels).double().mean())
    return model, accuracy


def fished(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, iterations: int, fish: bool,
           seed: int) -> torch.Tensor:
    """The image the server recovers of the target (images[0]): fishing on the batch, or IG on images[0] alone."""
    size = images.shape[-1]
    context = ServerContext(image_shape=(1, size, size), num_classes=10, normalization=NORM, batch_size=len(images))
    if fish:
        attack = ATTACKS.build("fishing", target_class=TARGET, iterations=iterations, device="cpu")
        sent = attack.modify_model(model, context)
    else:
        attack = ATTACKS.build("inverting_gradients", iterations=iterations, device="cpu")
        sent, images, labels = model, images[:1], labels[:1]
    update = FedSGDClient(mode="eval").update(sent, normalise(images), labels)
    obs = Observation(model=sent, update=update, kind="gradient", image_shape=(1, size, size), num_classes=10,
                      normalization=NORM, batch_size=len(images), labels=None if fish else labels)
    rec = attack.reconstruct(obs, rng=torch.Generator().manual_seed(seed))
    return rec.images[:1].cpu()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 56])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    per: dict[tuple[str, int, str], list[float]] = {}
    for size in args.sizes:
        pool = load_batch("fashion-mnist", batch_size=8000, indices=list(range(8000)), split="train", image_size=size,
                          channels=1)
        public = pool.images[:1000]
        test = load_batch("fashion-mnist", batch_size=2000, indices=list(range(2000)), split="test", image_size=size,
                          channels=1)
        targets = (test.labels == TARGET).nonzero().flatten()
        others = (test.labels != TARGET).nonzero().flatten()
        trained, accuracy = train(size, args.train_steps, pool)
        print(f"[{time.perf_counter() - t0:5.0f}s] {size} px ConvNet trained {args.train_steps} steps:"
              f" test accuracy {accuracy:.3f}", flush=True)
        for state in ("untrained", "trained"):
            for b in ["1", *map(str, args.batches)]:
                leaks, psnrs, refs = [], [], []
                for k in range(args.repeats):
                    g = torch.Generator().manual_seed(k)
                    rest = others[torch.randperm(len(others), generator=g)[: max(int(b) - 1, 0)]]
                    idx = torch.cat([targets[k : k + 1], rest])
                    images, labels = test.images[idx], test.labels[idx]
                    model = trained if state == "trained" else build_model(
                        "convnet", in_channels=1, num_classes=10, image_size=size, seed=k, width=0.5).eval()
                    guess = fished(model, images, labels, iterations=args.iterations, fish=b != "1", seed=k)
                    psnr = float(psnr_per_image(images[:1], guess))
                    ref = float(no_leak_reference(images[:1], public)["psnr"])
                    psnrs.append(psnr)
                    refs.append(ref)
                    leaks.append(psnr - ref)
                per[(state, size, b)] = psnrs
                p, leak = t_interval(psnrs), t_interval(leaks)
                rows.append({"size": size, "model": state, "accuracy": accuracy if state == "trained" else None,
                             "B": b, "attack": "fishing" if b != "1" else "inverting_gradients alone",
                             "repeats": args.repeats, "psnr_mean": p.mean, "psnr_ci95": p.half,
                             "reference_psnr": sum(refs) / len(refs), "leakage_db": leak.mean,
                             "leakage_ci95": leak.half, "leaked": sum(v > 0 for v in leaks)})
                r = rows[-1]
                print(f"[{time.perf_counter() - t0:5.0f}s] {size} px {state:<9} B {b:>3}  PSNR {p.mean:6.2f} ± {p.half:5.2f}"
                      f"  ref {r['reference_psnr']:6.2f}  leak {leak.mean:+6.2f} ± {leak.half:5.2f}"
                      f"  ({r['leaked']}/{args.repeats} above their reference)", flush=True)
    print("\nPaired differences in PSNR on the same target images (a − b)")
    pairs = []
    lo, hi = str(min(args.batches)), str(max(args.batches))
    for size in args.sizes:
        for b in [lo, hi]:
            pairs.append((f"{size} px B {b}: trained − untrained", per[("trained", size, b)], per[("untrained", size, b)]))
        for state in ("untrained", "trained"):
            pairs.append((f"{size} px {state}: B {hi} − B {lo}", per[(state, size, hi)], per[(state, size, lo)]))
    if len(args.sizes) > 1:
        small, large = min(args.sizes), max(args.sizes)
        for state in ("untrained", "trained"):
            pairs.append((f"{state} B {lo}: {large} px − {small} px", per[(state, large, lo)], per[(state, small, lo)]))
    for name, a, b in pairs:
        d = t_interval([x - y for x, y in zip(a, b, strict=True)])
        excludes = d.mean - d.half > 0 or d.mean + d.half < 0
        print(f"  {name:<40} {d.mean:+6.2f} ± {d.half:5.2f} dB  {'excludes 0' if excludes else ''}")
        rows.append({"size": None, "model": None, "accuracy": None, "B": None, "attack": f"paired: {name}",
                     "repeats": args.repeats, "psnr_mean": d.mean, "psnr_ci95": d.half, "reference_psnr": None,
                     "leakage_db": None, "leakage_ci95": None, "leaked": None})
    if args.csv:
        write_csv(rows, args.csv)
    print(f"{time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
