"""Trap weights over the batch size: how many of B images come out exactly, and at which firing rate.

    OMP_NUM_THREADS=1 python benchmarks/trap_weights.py [--batches 16 64 100] [--repeats 8] [--hidden 1000] [--csv FILE]

Fashion-MNIST (28 px, test split; the server scales its rows on 10,000 train images) and photo crops (32 px
tiles of the bundled photos, as in ``imprint.py``; public images are the tiles not in the batch), each through
an MLP whose first layer has ``--hidden`` rows (1000 in the paper), FedSGD, labels index mod 10. Each B runs at
firing rates 1 / (4B), 1 / B, 4 / B (the default, chosen by this table) and 16 / B (at most 0.5). An image counts as recovered at PSNR ≥ 60 dB after
the evaluation's matching (Hungarian on MSE). Printed per cell: the recovered count per batch, its mean with a
95 % interval over the ``--repeats`` batches, the minimum and the share of B.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _stats import t_interval
from _tables import write_csv
from imprint import PUBLIC_COUNT, draw, photo_tiles

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.base import ServerContext
from fedinvert.data import public_images
from fedinvert.fl import FedSGDClient
from fedinvert.metrics import match, psnr_per_image
from fedinvert.models import build_model
from fedinvert.observation import Observation

EXACT_DB = 60.0


def recovered(images: torch.Tensor, public: torch.Tensor, *, rate: float, hidden: int, seed: int) -> int:
    """Images of the batch recovered at ≥ 60 dB after matching."""
    channels, size = images.shape[1], images.shape[-1]
    norm = ((0.5,) * channels, (0.5,) * channels) if channels == 3 else ((0.2860,), (0.3530,))
    context = ServerContext(image_shape=(channels, size, size), num_classes=10, normalization=norm, public=public,
                            batch_size=len(images))
    attack = ATTACKS.build("trap_weights", rate=rate, seed=seed, device="cpu")
    victim = build_model("mlp", in_channels=channels, num_classes=10, image_size=size, seed=seed, hidden=hidden)
    model = attack.modify_model(victim, context)
    labels = torch.arange(len(images)) % 10
    mean = torch.tensor(norm[0]).view(1, -1, 1, 1)
    std = torch.tensor(norm[1]).view(1, -1, 1, 1)
    update = FedSGDClient(mode="eval").update(model, (images - mean) / std, labels)
    obs = Observation(model=model, update=update, kind="gradient", image_shape=(channels, size, size), num_classes=10,
                      normalization=norm, batch_size=len(images))
    rec = attack.reconstruct(obs)
    return int((psnr_per_image(images, rec.images[match(images, rec.images)]) >= EXACT_DB).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 100])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tiles = photo_tiles()
    fashion_public = public_images("fashion-mnist", split="train", image_size=28, channels=1, count=PUBLIC_COUNT)
    rows = []
    for data in ("fashion-mnist", "photo-crops"):
        for size in args.batches:
            for name, rate in (("1/(4B)", 0.25 / size), ("1/B", 1 / size), ("4/B", min(0.5, 4 / size)),
                               ("16/B", min(0.5, 16 / size))):
                counts = []
                for seed in range(args.repeats):
                    images, public = draw(data, size, seed, tiles=tiles, fashion_public=fashion_public)
                    counts.append(recovered(images, public, rate=rate, hidden=args.hidden, seed=seed))
                ci = t_interval([float(c) for c in counts])
                rows.append({"data": data, "B": size, "rate": name, "hidden": args.hidden, "repeats": args.repeats,
                             "recovered": " ".join(map(str, counts)), "recovered_mean": ci.mean,
                             "recovered_ci95": ci.half, "recovered_min": min(counts),
                             "share": ci.mean / size})
                r = rows[-1]
                print(f"[{time.perf_counter() - t0:5.0f}s] {data:14} B {size:>3} rate {name:<7} "
                      f"{r['recovered']:32} {r['recovered_mean']:6.2f} ± {r['recovered_ci95']:5.2f}  min"
                      f" {r['recovered_min']:3d}  share {r['share']:.2f}", flush=True)
    if args.csv:
        write_csv(rows, args.csv)
    print(f"{time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
