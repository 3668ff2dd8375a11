"""Milliseconds per iteration of breaching 0.1.2's Inverting Gradients on a victim written by ``speed.py``.

Run by a scratch interpreter that has breaching, not by fedinvert's environment (breaching is no fedinvert
dependency, and fedinvert is not needed here):

    python3 -m venv /work/scratch/breaching-venv
    /work/scratch/breaching-venv/bin/pip install torch==2.13.0
    /work/scratch/breaching-venv/bin/pip install breaching==0.1.2 torch==2.13.0 torchvision==0.28.0 scikit-image

    /work/scratch/breaching-venv/bin/python benchmarks/breaching_speed.py --victim V.pt --iterations 200

``--victim`` is a ``torch.save`` dict from ``speed.breaching_loop``: ``model`` (the victim as a ``torch.fx``
GraphModule, so unpickling needs torch alone), ``gradients`` (the observed gradient by parameter name),
``labels``, ``shape`` (B, C, H, W), ``mean`` and ``std`` (the victim's input normalisation). breaching's
``invertinggradients`` attack runs with its own configuration; only ``optim.max_iterations`` and
``restarts.num_trials = 1`` are set, the true labels are given, the server sends the victim's buffers (eval mode).

ms per iteration is the marginal cost, as in ``speed.fedinvert_loop``: after a discarded warm-up run, a short run
and one ``--iterations`` longer; their time difference over ``--iterations``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import json
import logging
import sys
import time
import warnings
from typing import Any

import torch

# breaching imports torchvision, whose import registers kernels on these operator schemas; beside the CPU torch
# wheel they do not exist, so they are defined here first (never called: the attack uses no torchvision operator).
# The library object must stay alive for its definitions to last.
_TORCHVISION = torch.library.Library("torchvision", "FRAGMENT")
for _schema in (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
):
    with contextlib.suppress(RuntimeError):  # already defined (a torchvision build that matches torch)
        _TORCHVISION.define(_schema)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import breaching  # type: ignore[import-not-found]  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402  (a breaching dependency)


def load_victim(path: str) -> dict[str, Any]:
    """The victim file, with ``gradients`` turned into a list in the loaded model's parameter order."""
    victim = torch.load(path, weights_only=False)
    model = victim["model"].eval()
    victim["gradients"] = [victim["gradients"][name].detach() for name, _ in model.named_parameters()]
    return victim


def attack_config() -> Any:
    """breaching's ``invertinggradients`` attack configuration (its announcement goes to stderr)."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return breaching.get_attack_config("invertinggradients")


def run_attack(victim: dict[str, Any], base_cfg: Any, iterations: int) -> float:
    """Seconds of one ``reconstruct`` call of ``iterations`` iterations and one trial (setup included)."""
    cfg = copy.deepcopy(base_cfg)
    cfg.optim.max_iterations = iterations
    cfg.restarts.num_trials = 1
    model = victim["model"]
    batch, channels, height, width = victim["shape"]
    setup = dict(device=torch.device("cpu"), dtype=torch.float)
    metadata = OmegaConf.create(
        {
            "shape": [channels, height, width],
            "mean": list(victim["mean"]),
            "std": list(victim["std"]),
            "modality": "vision",
            "classes": int(victim["gradients"][-1].shape[0]),
        }
    )
    payload = {
        "parameters": [p.detach() for p in model.parameters()],
        "buffers": [b.detach() for b in model.buffers()],
        "metadata": metadata,
    }
    shared = {
        "gradients": list(victim["gradients"]),
        "buffers": None,
        "metadata": {"num_data_points": batch, "labels": victim["labels"].clone(), "local_hyperparams": None},
    }
    torch.manual_seed(0)  # breaching draws its randn start from the global generator
    start = time.perf_counter()
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg, setup)
    attacker.reconstruct([payload], [shared], {}, dryrun=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--victim", required=True, help="file written by speed.py (torch.save)")
    parser.add_argument("--iterations", type=int, default=200, help="the extra iterations of the long run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("breaching").setLevel(logging.WARNING)
    victim = load_victim(args.victim)
    base_cfg = attack_config()
    warm = max(10, args.iterations // 4)
    run_attack(victim, base_cfg, warm)  # warm-up, discarded
    short = run_attack(victim, base_cfg, warm)
    long = run_attack(victim, base_cfg, warm + args.iterations)
    result = {
        "ms_per_iteration": (long - short) / args.iterations * 1e3,
        "short_s": short,
        "long_s": long,
        "breaching": importlib.metadata.version("breaching"),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
