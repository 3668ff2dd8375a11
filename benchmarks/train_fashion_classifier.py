"""Train the Fashion-MNIST classifier that judges the ``fashion`` prior, and write its weights and metadata.

    python benchmarks/train_fashion_classifier.py --epochs 5 --threads 1 \
        --out src/fedinvert/priors/weights        # ≈ 15-25 min on one shared CPU thread

Writes ``fashion_classifier.safetensors`` and ``fashion_classifier.json`` (command, epochs, test accuracy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from fedinvert.priors.quality import classifier_metadata, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="src/fedinvert/priors/weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = train_classifier(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in result.model.state_dict().items()}
    save_file(state, str(out / "fashion_classifier.safetensors"))
    command = ["python", "benchmarks/train_fashion_classifier.py", *sys.argv[1:]]
    (out / "fashion_classifier.json").write_text(classifier_metadata(result, command=command, seed=args.seed))
    print(
        f"test accuracy {result.test_accuracy:.4f} after {result.epochs} epochs, {result.seconds:.0f} s; wrote {out}"
    )


if __name__ == "__main__":
    main()
