"""The determinism policy: what it switches on CUDA, that it restores the switches, seeds, and its run.json entry.

The CUDA switches are process-wide flags that a CPU build of PyTorch also holds, so the policy for a CUDA
device can be entered and checked here without a GPU (no CUDA kernel runs).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from fedinvert.cli import main
from fedinvert.determinism import CUBLAS_WORKSPACE_CONFIG, GLOBAL_STREAM, policy
from fedinvert.seeding import stream_seed


def switches() -> dict[str, object]:
    return {
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "precision": torch.get_float32_matmul_precision(),
        "benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
    }


def test_cuda_policy_turns_tf32_and_benchmarking_off_and_restores_everything(monkeypatch):
    # Prepare: the opposite of the policy everywhere, and no cuBLAS setting in the environment.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = switches()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = True
    try:
        user = switches()
        # Execute
        with policy(torch.device("cuda"), seed=3) as record:
            inside = switches()
            workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        after = switches()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before["matmul_tf32"]
        torch.backends.cudnn.allow_tf32 = before["cudnn_tf32"]
        torch.set_float32_matmul_precision(before["precision"])
        torch.backends.cudnn.benchmark = before["benchmark"]
    # Assert
    assert inside == {"matmul_tf32": False, "cudnn_tf32": False, "precision": "highest", "benchmark": False,
                      "cudnn_deterministic": True, "deterministic": True, "warn_only": True}
    assert workspace == CUBLAS_WORKSPACE_CONFIG
    assert after == user
    assert record["cuda"]["tf32"] is False and record["cuda"]["deterministic_algorithms"] == "warn_only"
    assert record["cuda"]["cublas_workspace_config_from"] == "fedinvert"
    assert record["global_seed"] == stream_seed(3, GLOBAL_STREAM)
    json.dumps(record)  # plain data


def test_a_users_cublas_setting_is_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with policy("cuda", seed=0) as record:
        pass
    assert record["cuda"]["cublas_workspace_config"] == ":16:8"
    assert record["cuda"]["cublas_workspace_config_from"] == "environment"


def test_cpu_policy_only_seeds_and_the_seed_comes_from_the_run():
    before = switches()
    with policy("cpu", seed=5) as record:
        first = torch.rand(4)
        assert switches() == before
    with policy("cpu", seed=5):
        again = torch.rand(4)
    with policy("cpu", seed=6):
        other = torch.rand(4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert record["cuda"] is None and record["device_type"] == "cpu"


def test_policy_restores_the_switches_when_the_attack_fails(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = switches()
    with pytest.raises(KeyboardInterrupt), policy("cuda", seed=0):
        raise KeyboardInterrupt
    assert switches() == before


def test_run_json_records_the_policy(tmp_path, fast_cfg):
    out = tmp_path / "run"
    code = main(["attack", "attack=inverting_gradients", "attack.iterations=2", "dataset=synthetic", "batch_size=1",
                 "image_size=8", "model=convnet", "model.width=0.25", "seed=4", f"out={out}", *fast_cfg])
    assert code == 0
    record = json.loads((out / "run.json").read_text())["determinism"]
    assert record["device_type"] == "cpu" and record["cuda"] is None
    assert record["global_seed"] == stream_seed(4, GLOBAL_STREAM)
