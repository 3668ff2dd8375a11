"""Quality of the ``fashion`` prior: class agreement and classifier-feature Fréchet distance, with the floor.

    python benchmarks/prior_quality.py                                # the committed fashion.safetensors
    python benchmarks/prior_quality.py --checkpoint .prior-train      # any training checkpoint (EMA generator)
    python benchmarks/prior_quality.py --weights PATH --per-class 100

Judged by the committed Fashion-MNIST classifier (``fashion_classifier.safetensors``). Prints the fraction of
class-conditioned samples the classifier labels as their class, and the Fréchet distance between prior samples
and the test split on the classifier's penultimate features beside the same distance for as many class-balanced
train images (the floor). Reading a checkpoint never disturbs a training run writing to the same folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fedinvert.data.fashion_mnist import CLASSES
from fedinvert.priors import FashionPrior
from fedinvert.priors.fashion import WEIGHTS_FILE
from fedinvert.priors.quality import load_classifier, prior_quality
from fedinvert.priors.training import export_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", help="an exported fashion.safetensors (default: the committed one)")
    source.add_argument("--checkpoint", help="a training checkpoint folder or checkpoint.safetensors")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.checkpoint:
        with tempfile.TemporaryDirectory() as folder:
            target = export_generator(checkpoint=args.checkpoint, export_dir=folder)
            info = json.loads(target.with_suffix(".json").read_text())
            prior = FashionPrior(weights=target)
        where = f"checkpoint {args.checkpoint}"
    else:
        weights = Path(args.weights) if args.weights else WEIGHTS_FILE
        prior = FashionPrior(weights=weights)
        metadata = weights.with_suffix(".json")
        info = json.loads(metadata.read_text()) if metadata.is_file() else {}
        where = str(weights)
    result = prior_quality(prior, load_classifier(), per_class=args.per_class, seed=args.seed)
    result["source"] = where
    if info.get("steps") is not None:
        result["steps"], result["epochs"] = info["steps"], info["epochs"]
    result["seconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"prior: {where}"
        + (f"  (step {result['steps']}, {result['epochs']:.2f} epochs)" if "steps" in result else "")
    )
    print(f"class agreement ({result['samples']} samples): {result['agreement']:.3f}")
    for name, value in zip(CLASSES, result["agreement_per_class"], strict=True):
        print(f"  {name:<12} {value:.2f}")
    print(f"Fréchet distance, prior samples vs test split:   {result['fd_prior_test']:.2f}")
    print(
        f"Fréchet distance, train images vs test split:    {result['fd_train_test']:.2f}  (floor, same count)"
    )
    print(f"ratio: {result['fd_ratio']:.1f}   ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
