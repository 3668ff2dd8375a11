"""Robbing the Fed's imprint attack over the batch size: how many of B images come out exactly.

    OMP_NUM_THREADS=1 python benchmarks/imprint.py [--bins 1000] [--batches 1 8 32 64] [--repeats 3] [--csv FILE]
    OMP_NUM_THREADS=1 python benchmarks/imprint.py --fedavg [--repeats 8] [--csv FILE]   # what survives FedAvg

Fashion-MNIST (28 px, test split, public quantiles from 10,000 train images) and photo crops (32 px tiles of
the 11 bundled photos resized to 256 px: 64 tiles each, 704 in all; public quantiles from the tiles not in the
batch), each through `convnet` behind the imprint block, FedSGD, labels index mod 10. An image counts as recovered at PSNR ≥ 60 dB after matching (Hungarian on MSE, as the evaluation
does); the next columns count them after a Hungarian matching that maximises the total PSNR instead (an exact
reconstruction then always keeps its own image, where the total-MSE matching can trade it for a lower total),
and the images some reconstruction equals at ≥ 60 dB before any matching (an upper bound on both). Prints a table (mean over
``--repeats`` batches drawn with different seeds) and writes it as CSV when ``--csv`` is given.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch
from _tables import write_csv
from scipy.optimize import linear_sum_assignment

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.base import ServerContext
from fedinvert.data import load_batch, public_images
from fedinvert.fl import FedAvgClient, FedSGDClient
from fedinvert.metrics import match, psnr_per_image
from fedinvert.models import build_model
from fedinvert.observation import Observation

EXACT_DB = 60.0
PUBLIC_COUNT = 10_000  # the runner gives a malicious server this many public images too


def photo_tiles(tile: int = 32, size: int = 256) -> torch.Tensor:
    """(11 · (size / tile)², 3, tile, tile) tiles of the bundled photos resized to ``size`` px."""
    photos = load_batch("photos", batch_size=11, indices=list(range(11)), image_size=size).images
    tiles = photos.unfold(2, tile, tile).unfold(3, tile, tile)  # (N, C, k, k, tile, tile)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, tile, tile).contiguous()


def draw(data: str, size: int, seed: int, *, tiles: torch.Tensor,
         fashion_public: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``seed`` of ``size`` images of ``data`` (``fashion-mnist`` or ``photo-crops``) and the public images the
    server may use: 10,000 train images for Fashion-MNIST, the tiles not in the batch for photo crops."""
    if data == "fashion-mnist":
        return load_batch("fashion-mnist", batch_size=size, image_size=28, channels=1, seed=seed).images, fashion_public
    order = torch.randperm(len(tiles), generator=torch.Generator().manual_seed(seed))
    return tiles[order[:size]], tiles[order[size:]]


def recovered(images: torch.Tensor, public: torch.Tensor, *, bins: int, seed: int, scale: float = 1e-3,
              client: FedSGDClient | FedAvgClient | None = None) -> tuple[int, float, int, int]:
    """(images at ≥ 60 dB after the evaluation's matching, their mean PSNR, images at ≥ 60 dB after a matching
    that maximises the total PSNR, images that some reconstruction equals at ≥ 60 dB)."""
    channels, size = images.shape[1], images.shape[-1]
    norm = ((0.5,) * channels, (0.5,) * channels) if channels == 3 else ((0.2860,), (0.3530,))
    context = ServerContext(image_shape=(channels, size, size), num_classes=10, normalization=norm, public=public)
    attack = ATTACKS.build("imprint", bins=bins, scale=scale, device="cpu")
    victim = build_model("convnet", in_channels=channels, num_classes=10, image_size=size, seed=seed)
    model = attack.modify_model(victim, context)
    labels = torch.arange(len(images)) % 10
    mean = torch.tensor(norm[0]).view(1, -1, 1, 1)
    std = torch.tensor(norm[1]).view(1, -1, 1, 1)
    client = FedSGDClient(mode="eval") if client is None else client
    update = client.update(model, (images - mean) / std, labels)
    obs = Observation(model=model, update=update, kind=client.kind, image_shape=(channels, size, size), num_classes=10,
                      normalization=norm, batch_size=len(images))
    rec = attack.reconstruct(obs)
    psnr = psnr_per_image(images, rec.images[match(images, rec.images)])
    table = torch.stack([psnr_per_image(images, r.expand_as(images)) for r in rec.images], 1)  # (private, rec)
    rows, cols = linear_sum_assignment(table.double().numpy(), maximize=True)
    by_psnr = int((table[torch.as_tensor(rows), torch.as_tensor(cols)] >= EXACT_DB).sum())
    return int((psnr >= EXACT_DB).sum()), float(psnr.mean()), by_psnr, int((table.amax(1) >= EXACT_DB).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", type=int, default=1000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", default=None)
    parser.add_argument("--fedavg", action="store_true",
                        help="instead: what survives FedAvg's local steps (B = 8, 64; E = 1, 2, 5; local batch 8;"
                             " lr 1e-3 and 0.1; the block's scale 1e-3 (default) and 100)")
    args = parser.parse_args(argv)
    if args.fedavg:
        return fedavg_table(args)
    tiles = photo_tiles()
    fashion_public = public_images("fashion-mnist", split="train", image_size=28, channels=1, count=PUBLIC_COUNT)
    rows = []
    for data in ("fashion-mnist", "photo-crops"):
        for size in args.batches:
            counts, psnrs, by_psnrs, anys = [], [], [], []
            for seed in range(args.repeats):
                images, public = draw(data, size, seed, tiles=tiles, fashion_public=fashion_public)
                count, psnr, by_psnr, exact_any = recovered(images, public, bins=args.bins, seed=seed)
                counts.append(count)
                by_psnrs.append(by_psnr)
                anys.append(exact_any)
                psnrs.append(psnr)
            rows.append({"data": data, "B": size, "bins": args.bins, "repeats": args.repeats,
                         "recovered_mean": sum(counts) / len(counts), "recovered_min": min(counts),
                         "recovered": " ".join(map(str, counts)), "psnr_mean": sum(psnrs) / len(psnrs),
                         "recovered_psnr_matching": " ".join(map(str, by_psnrs)),
                         "recovered_psnr_matching_mean": sum(by_psnrs) / len(by_psnrs),
                         "recovered_psnr_matching_min": min(by_psnrs),
                         "exact_unmatched_mean": sum(anys) / len(anys)})
    header = (f"{'data':14} {'B':>3} {'bins':>5}  recovered (≥ {EXACT_DB:.0f} dB) per batch   mean    min  mean PSNR"
              "  | PSNR matching: mean  min | exact before matching")
    print(header)
    for r in rows:
        print(f"{r['data']:14} {r['B']:>3} {r['bins']:>5}  {r['recovered']:28} {r['recovered_mean']:6.2f} "
              f"{r['recovered_min']:5d}  {r['psnr_mean']:6.1f} dB  | {r['recovered_psnr_matching_mean']:18.2f}"
              f" {r['recovered_psnr_matching_min']:4d} | {r['exact_unmatched_mean']:6.2f}")
    if args.csv:
        write_csv(rows, args.csv)
    return 0


def fedavg_table(args: argparse.Namespace) -> int:
    """Recovered images when the client trains E local epochs on mini-batches of 8 and shares its float32 weight
    delta. The block's gradient is small next to its weights (about 1/D), so the delta keeps few of its bits
    unless the learning rate or the decoder's scale is large."""
    tiles = photo_tiles()
    fashion_public = public_images("fashion-mnist", split="train", image_size=28, channels=1, count=PUBLIC_COUNT)
    rows = []
    print(f"{'data':14} {'B':>3} {'E':>2} {'lr':>6} {'scale':>6}  recovered (≥ {EXACT_DB:.0f} dB) per batch   mean    min  mean PSNR")
    for data in ("fashion-mnist", "photo-crops"):
        for size in (8, 64):
            for scale, lr in itertools.product((1e-3, 100.0), (1e-3, 0.1)):
                for epochs in (1, 2, 5):
                    counts, psnrs = [], []
                    for seed in range(args.repeats):
                        images, public = draw(data, size, seed, tiles=tiles, fashion_public=fashion_public)
                        client = FedAvgClient(local_epochs=epochs, local_batch_size=8, lr=lr, shuffle_seed=seed)
                        count, psnr, _, _ = recovered(images, public, bins=args.bins, seed=seed, scale=scale,
                                                      client=client)
                        counts.append(count)
                        psnrs.append(psnr)
                    rows.append({"data": data, "B": size, "local_epochs": epochs, "local_batch_size": 8, "lr": lr,
                                 "scale": scale,
                                 "bins": args.bins, "repeats": args.repeats, "recovered": " ".join(map(str, counts)),
                                 "recovered_mean": sum(counts) / len(counts), "recovered_min": min(counts),
                                 "psnr_mean": sum(psnrs) / len(psnrs)})
                    r = rows[-1]
                    print(f"{data:14} {size:>3} {epochs:>2} {lr:>6g} {scale:>6g}  {r['recovered']:28} {r['recovered_mean']:6.2f}"
                          f" {r['recovered_min']:5d}  {r['psnr_mean']:6.1f} dB", flush=True)
    if args.csv:
        write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
