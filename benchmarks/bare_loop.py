"""Inverting Gradients through fedinvert against a plain 15-line PyTorch loop, same victim, same true gradient.

The victim is DLG's sigmoid LeNet (``lenet-dlg``, weights U(−0.5, 0.5), seed 0) at 32 px, B = 1, label known,
identity normalisation (the victim sees [0, 1] images). Both attackers get the same true gradient and the same
randn start. The plain loop is Adam lr 0.1 (unsigned, no schedule) on loss = 1 − cosine of the flattened
gradients + 1e-4 · TV (mean |dx| + mean |dy|), ``backward(inputs=[x])``, clamp to [0, 1] after each step; its
last iterate is scored. fedinvert runs ``inverting_gradients`` with its defaults (or ``--ig key=value``
overrides) at the same iteration count and one restart; it returns its least-distance iterate.

Printed per image: both PSNRs, the paired difference (ours − loop), the constant-grey (0.5) image, the image's
own mean colour (an oracle: it uses the private image) and the no-leak reference (best of the public constant,
mean and random images; the public images are the other photos). Then the mean ± 95 % t-interval of each
column and of the paired difference over the images.

    python benchmarks/bare_loop.py                    # 8 photos (indices 0-7), 1000 iterations: ~2 min here
    python benchmarks/bare_loop.py --full             # all 11 photos
    python benchmarks/bare_loop.py --ig signed=true schedule=step   # the paper's recipe at this budget
    python benchmarks/bare_loop.py --model convnet --breaching      # + breaching 0.1.2 (see below)

``--breaching`` adds breaching 0.1.2's ``invertinggradients`` attack (its own configuration, only
``optim.max_iterations`` and ``restarts.num_trials = 1`` set) on the same victim, true gradient, label and randn
start. breaching is not a fedinvert dependency: run this script with a scratch environment that has both
(``python -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install breaching==0.1.2 torch==2.13.0
torchvision==0.28.0 scikit-image`` and fedinvert with ``--no-deps`` plus its requirements). Its torchvision
import fails beside the CPU torch for want of three operator schemas; they are defined (never called) first.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from _stats import t_interval
from _tables import parse_sized, sized_parser, write_csv

from fedinvert.attacks import ATTACKS
from fedinvert.data import load_batch, public_images
from fedinvert.data.photos import PHOTO_ORDER
from fedinvert.fl import FedSGDClient
from fedinvert.metrics import no_leak_reference, psnr_per_image
from fedinvert.models import build_model
from fedinvert.observation import Observation

IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
DEFAULT_IMAGES = tuple(range(8))  # astronaut, chelsea (1), coffee (2), rocket, hubble, ihc, retina, motorcycle


def plain_loop(model, target: Sequence[torch.Tensor], label: torch.Tensor, x0: torch.Tensor, *,
               iterations: int, lr: float = 0.1, tv: float = 1e-4) -> torch.Tensor:
    """The plain loop (no fedinvert code): returns its last iterate, (1, C, H, W) in [0, 1]."""
    params = [p for p in model.parameters() if p.requires_grad]
    flat_target = torch.cat([t.flatten() for t in target])
    x = x0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(iterations):
        optimizer.zero_grad()
        grads = torch.autograd.grad(F.cross_entropy(model(x), label), params, create_graph=True)
        flat = torch.cat([g.flatten() for g in grads])
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
        loss = 1 - F.cosine_similarity(flat, flat_target, dim=0) + tv * (dx + dy)
        loss.backward(inputs=[x])
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()


def photo_victim(index: int, *, image_size: int = 32, model: str = "lenet-dlg", seed: int = 0,
                 normalization: tuple[tuple[float, ...], tuple[float, ...]] = IDENTITY,
                 **model_options: Any) -> tuple[Observation, torch.Tensor, torch.Tensor, torch.nn.Module]:
    """(observation with the label granted, private image (1, 3, S, S) in [0, 1], label (1,), victim) of photo
    ``index``; the victim is built with ``seed`` and sees ``(image − mean) / std``."""
    batch = load_batch("photos", batch_size=1, indices=[index], image_size=image_size, channels=3)
    victim = build_model(model, in_channels=3, num_classes=10, image_size=image_size, seed=seed, **model_options)
    mean = torch.tensor(normalization[0]).view(1, -1, 1, 1)
    std = torch.tensor(normalization[1]).view(1, -1, 1, 1)
    update = FedSGDClient(mode="eval").update(victim, (batch.images - mean) / std, batch.labels)
    obs = Observation(model=victim, update=update, kind="gradient", image_shape=(3, image_size, image_size),
                      num_classes=10, normalization=normalization, batch_size=1, labels=batch.labels.clone())
    return obs, batch.images, batch.labels, victim


@functools.cache
def _breaching() -> tuple[Any, Any, Any]:
    """(the breaching module, its Inverting Gradients attack config, the torchvision schema library), loaded once
    per process; the library object is kept because its definitions last only as long as it does."""
    import logging

    library = torch.library.Library("torchvision", "FRAGMENT")  # schemas its torchvision import registers on
    for schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                   "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"):
        with contextlib.suppress(RuntimeError):  # already defined
            library.define(schema)
    import breaching  # type: ignore[import-not-found]

    logging.getLogger("breaching").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(None):
        cfg = breaching.get_config(overrides=["attack=invertinggradients"])
    return breaching, cfg.attack, library


def breaching_ig(model: torch.nn.Module, target: Sequence[torch.Tensor], label: torch.Tensor, x0: torch.Tensor, *,
                 iterations: int) -> torch.Tensor:
    """breaching 0.1.2's Inverting Gradients (its configuration; only the iteration count and one trial set) from
    the start ``x0`` on a victim that sees [0, 1] images: (1, C, H, W) in [0, 1]."""
    from omegaconf import OmegaConf

    breaching, base, _ = _breaching()
    attack_cfg = copy.deepcopy(base)
    attack_cfg.optim.max_iterations = iterations
    attack_cfg.restarts.num_trials = 1
    setup = {"dtype": torch.float, "device": torch.device("cpu")}
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), attack_cfg, setup)
    channels = x0.shape[1]
    metadata = OmegaConf.create({"shape": list(x0.shape[1:]), "mean": [0.0] * channels, "std": [1.0] * channels,
                                 "modality": "vision", "classes": 10})
    payload = {"parameters": [p.detach() for p in model.parameters()],
               "buffers": [b.detach() for b in model.buffers()], "metadata": metadata}
    shared = {"gradients": [t.detach() for t in target], "buffers": None,
              "metadata": {"num_data_points": 1, "labels": label.clone(), "local_hyperparams": None}}
    data, _ = attacker.reconstruct([payload], [shared], {}, initial_data=x0.clone(), dryrun=False)
    return data["data"].detach().clamp(0, 1)


def start(shape: Sequence[int], seed: int) -> torch.Tensor:
    """The randn start both attackers use: what `InvertingGradients` draws from ``Generator().manual_seed(seed)``
    with one restart (its start is randn in the victim's normalised space)."""
    return torch.randn((1, 1, *shape), generator=torch.Generator().manual_seed(seed))[0]


def run_ig(obs: Observation, *, iterations: int, seed: int, **kwargs: Any) -> torch.Tensor:
    """fedinvert's Inverting Gradients (defaults unless overridden), one restart, eager: (B, C, H, W) in [0, 1]."""
    attack = ATTACKS.build("inverting_gradients", iterations=iterations, restarts=1, compile=False, device="cpu",
                           log_every=max(1, iterations), **kwargs)
    return attack.reconstruct(obs, rng=torch.Generator().manual_seed(seed)).images


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings (values read as YAML) -> keyword arguments."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --ig expects key=value, got {item!r}")
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        out[key] = value
    return out


def one_image(index: int, *, iterations: int, seed: int, ig: dict[str, Any], victim_seed: int = 0,
              model: str = "lenet-dlg", with_breaching: bool = False) -> dict[str, Any]:
    """The loop, fedinvert (and breaching) and the references on photo ``index``: one result row."""
    obs, private, label, victim = photo_victim(index, seed=victim_seed, model=model)
    victim.eval()
    x0 = start(obs.image_shape, seed)
    t0 = time.perf_counter()
    loop = plain_loop(victim, obs.update_list(), label, x0, iterations=iterations)
    t1 = time.perf_counter()
    ours = run_ig(obs, iterations=iterations, seed=seed, **ig)
    t2 = time.perf_counter()
    public = public_images("photos", exclude_indices=[index], image_size=32, channels=3)  # the other photos
    reference = no_leak_reference(private, public, draws=len(public))
    grey = torch.full_like(private, 0.5)
    own_mean = private.mean(dim=(2, 3), keepdim=True).expand_as(private)
    row = {
        "image": PHOTO_ORDER[index], "index": index, "iterations": iterations,
        "loop_psnr": float(psnr_per_image(private, loop)[0]),
        "ours_psnr": float(psnr_per_image(private, ours)[0]),
        "grey_psnr": float(psnr_per_image(private, grey)[0]),
        "mean_colour_psnr": float(psnr_per_image(private, own_mean)[0]),
        "reference_psnr": reference["psnr"], "reference_kind": reference["best"],
        "loop_seconds": t1 - t0, "ours_seconds": t2 - t1,
    }
    row["difference"] = row["ours_psnr"] - row["loop_psnr"]
    row["ours_leakage_db"] = row["ours_psnr"] - row["reference_psnr"]
    if with_breaching:
        t3 = time.perf_counter()
        theirs = breaching_ig(victim, obs.update_list(), label, x0, iterations=iterations)
        row["breaching_seconds"] = time.perf_counter() - t3
        row["breaching_psnr"] = float(psnr_per_image(private, theirs)[0])
        row["ours_minus_breaching"] = row["ours_psnr"] - row["breaching_psnr"]
    return row


COLUMNS = (("loop_psnr", "loop"), ("ours_psnr", "ours"), ("difference", "ours−loop"), ("grey_psnr", "grey"),
           ("mean_colour_psnr", "own mean"), ("reference_psnr", "no-leak ref"), ("ours_leakage_db", "ours leak"))


BREACHING_COLUMNS = (("breaching_psnr", "breaching"), ("ours_minus_breaching", "ours−brch"))


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    columns = COLUMNS + (BREACHING_COLUMNS if "breaching_psnr" in rows[0] else ())
    print(f"{'image':<22}" + "".join(f"{title:>12}" for _, title in columns) + f"{'loop s':>8}{'ours s':>8}")
    for r in rows:
        print(f"{r['image']:<22}" + "".join(f"{r[key]:12.2f}" for key, _ in columns)
              + f"{r['loop_seconds']:8.1f}{r['ours_seconds']:8.1f}")
    cells = []
    for key, _ in columns:
        interval = t_interval([r[key] for r in rows])
        cells.append(f"{interval.mean:6.2f}±{interval.half:.2f}")
    print(f"{'mean ± 95 % CI':<22}" + "".join(f"{c:>12}" for c in cells))


def main() -> None:
    parser = sized_parser(__doc__, csv="benchmarks/results/bare_loop.csv", full_help="all 11 photos",
                          smoke_help="2 photos, 20 iterations (numbers meaningless)")
    parser.add_argument("--iterations", type=int, default=None, help="per attacker (default 1000; smoke 20)")
    parser.add_argument("--images", default=None, help="comma-separated photo indices (default 0-7)")
    parser.add_argument("--ig", nargs="*", default=[], metavar="KEY=VALUE",
                        help="keyword overrides for inverting_gradients (default: its defaults)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared randn start")
    parser.add_argument("--victim-seed", type=int, default=0, help="seed of the victim's weights")
    parser.add_argument("--model", default="lenet-dlg", help="victim registry name (default lenet-dlg)")
    parser.add_argument("--breaching", action="store_true",
                        help="also run breaching 0.1.2's Inverting Gradients (needs breaching installed)")
    args, size = parse_sized(parser)
    iterations = args.iterations or (20 if size == "smoke" else 1000)
    if args.images:
        images = [int(i) for i in args.images.split(",")]
    else:
        images = list(range(len(PHOTO_ORDER))) if size == "full" else [1, 2] if size == "smoke" else DEFAULT_IMAGES
    ig = parse_overrides(args.ig)
    rows = []
    for index in images:
        rows.append(one_image(index, iterations=iterations, seed=args.seed, ig=ig, victim_seed=args.victim_seed,
                              model=args.model, with_breaching=args.breaching))
        r = rows[-1]
        theirs = f"  breaching {r['breaching_psnr']:6.2f}" if args.breaching else ""
        print(f"{r['image']:<22} loop {r['loop_psnr']:6.2f}  ours {r['ours_psnr']:6.2f}{theirs}"
              f"  ({r['loop_seconds']:.0f} s, {r['ours_seconds']:.0f} s)", flush=True)
    settings = ", ".join(f"{k}={v}" for k, v in ig.items()) or "its defaults"
    print(f"\n{args.model}, 32 px photo crops, B = 1, label known, identity normalisation, {iterations} iterations,"
          f" one restart, victim seed {args.victim_seed}, the same randn start (seed {args.seed}); fedinvert inverting_gradients with {settings}."
          " PSNR in dB:")
    print_table(rows)
    if args.csv:
        print(f"\nwrote {write_csv(rows, args.csv)}")
    if size != "full":
        print(f"left out at this size (--full runs them): photos {sorted(set(range(len(PHOTO_ORDER))) - set(images))}")


if __name__ == "__main__":
    main()
