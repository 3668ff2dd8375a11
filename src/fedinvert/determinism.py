"""The determinism policy of an attack run, in one place (documented in docs/determinism.md).

Gradient matching compares a dummy gradient with the observed one; late in a run their difference is a small
fraction of either, so how each is rounded decides where the optimiser goes. On CUDA three defaults would
make that rounding coarse or change it from run to run:

* TensorFloat-32: Ampere and later GPUs may run float32 matrix products and convolutions with a 10-bit
  mantissa (cuDNN convolutions do by default). The policy turns TF32 off (``torch.backends.cuda.matmul.
  allow_tf32 = False``, ``torch.backends.cudnn.allow_tf32 = False``, ``torch.set_float32_matmul_precision(
  "highest")``), so a GPU computes the same float32 objective as the CPU, within float32 rounding.
* Algorithm choice: ``cudnn.benchmark`` picks convolution algorithms by timing them, so two runs may use
  different ones; it is switched off and ``cudnn.deterministic`` on.
* Nondeterministic kernels (atomic adds in some backward passes, floating-point scans):
  ``torch.use_deterministic_algorithms(True, warn_only=True)`` selects deterministic kernels where PyTorch has
  them and warns (instead of failing) where it has none, naming the operation; cuBLAS needs
  ``CUBLAS_WORKSPACE_CONFIG`` set for this (``:4096:8`` unless the user set it).

Seeds: the attack's own draws come from the CPU generator of the run's ``attack`` stream (`fedinvert.seeding`),
so a CPU and a CUDA run start from the same point; torch's default generators (CPU and every CUDA device), which
a few library functions use implicitly, are seeded from the run's ``global`` stream.

On the CPU only the seeding applies: the CPU kernels fedinvert uses are deterministic for a fixed thread count,
and TF32, cuDNN and cuBLAS do not exist there.

The legacy TF32 switches are used (not ``fp32_precision``) because they leave both the legacy and the new
getters of this PyTorch consistent, whereas setting the new cuDNN ones makes the legacy getter, which other
code still calls, raise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from fedinvert.seeding import stream_seed

#: cuBLAS workspace setting for deterministic cuBLAS (NVIDIA documents :4096:8 and :16:8).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
#: The seeding stream of torch's default generators during an attack.
GLOBAL_STREAM = "global"


def _tf32_state() -> dict[str, Any]:
    """The TF32 switches as the legacy getters report them, or as the new ones do where the legacy ones refuse
    (a state set through a mix of both APIs)."""
    try:
        return {
            "api": "legacy",
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }
    except RuntimeError:
        return {
            "api": "fp32_precision",
            "matmul": torch.backends.cuda.matmul.fp32_precision,
            "cudnn": torch.backends.cudnn.fp32_precision,
            "conv": torch.backends.cudnn.conv.fp32_precision,  # type: ignore[attr-defined]
            "rnn": torch.backends.cudnn.rnn.fp32_precision,  # type: ignore[attr-defined]
        }


def _restore_tf32(state: dict[str, Any]) -> None:
    if state["api"] == "legacy":
        torch.backends.cuda.matmul.allow_tf32 = state["matmul_allow_tf32"]
        torch.backends.cudnn.allow_tf32 = state["cudnn_allow_tf32"]
        torch.set_float32_matmul_precision(state["float32_matmul_precision"])
    else:
        torch.backends.cuda.matmul.fp32_precision = state["matmul"]
        torch.backends.cudnn.fp32_precision = state["cudnn"]
        torch.backends.cudnn.conv.fp32_precision = state["conv"]  # type: ignore[attr-defined]
        torch.backends.cudnn.rnn.fp32_precision = state["rnn"]  # type: ignore[attr-defined]


@contextlib.contextmanager
def policy(device: torch.device | str, *, seed: int) -> Iterator[dict[str, Any]]:
    """Apply the determinism policy for an attack on ``device`` for the duration of the block.

    Seeds torch's default generators from the ``global`` stream of ``seed`` (on every device type); on CUDA
    also turns TF32 and cuDNN benchmarking off, cuDNN's deterministic mode and PyTorch's deterministic
    algorithms (warn-only) on, and sets ``CUBLAS_WORKSPACE_CONFIG`` when it is unset. On leaving, the switches
    are restored; the generators stay seeded and the environment variable stays set (cuBLAS reads it when
    it first runs).

    Args:
        device: the device the attack runs on.
        seed: the run's seed.

    Yields:
        The record of what was applied, plain data for ``run.json``.
    """
    device = torch.device(device)
    global_seed = stream_seed(seed, GLOBAL_STREAM)
    torch.manual_seed(global_seed)  # CPU and every CUDA device
    record: dict[str, Any] = {
        "device_type": device.type,
        "global_seed_stream": GLOBAL_STREAM,
        "global_seed": global_seed,
        "attack_stream": "attack",
    }
    if device.type != "cuda":
        record["cuda"] = None
        yield record
        return
    workspace_preset = "CUBLAS_WORKSPACE_CONFIG" in os.environ
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    saved: dict[str, Any] = {
        "tf32": _tf32_state(),
        "benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
    }
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    record["cuda"] = {
        "tf32": False,
        "float32_matmul_precision": "highest",
        "cudnn_benchmark": False,
        "cudnn_deterministic": True,
        "deterministic_algorithms": "warn_only",
        "cublas_workspace_config": os.environ["CUBLAS_WORKSPACE_CONFIG"],
        "cublas_workspace_config_from": "environment" if workspace_preset else "fedinvert",
    }
    try:
        yield record
    finally:
        _restore_tf32(saved["tf32"])
        torch.backends.cudnn.benchmark = saved["benchmark"]
        torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
        torch.use_deterministic_algorithms(saved["deterministic"], warn_only=saved["warn_only"])
