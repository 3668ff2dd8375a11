"""Checks that need a CUDA device (marker ``cuda``; skipped without one; `scripts/gpu_check.sh` runs them).

What a GPU can change: rounding (TF32, reduction order), nondeterministic kernels, float64 that is slow there,
host syncs that stall it. So: the ℓ1 projection gives the CPU's result bit for bit and passes PyTorch's
strict deterministic mode; short Inverting Gradients and GIFD runs finish with finite metrics, within a
tolerance of the CPU's PSNR, and an Inverting Gradients rerun on the GPU is bit-identical; steps make no
float64 tensor on the device and no host read per step; the grouped restart step equals the looped one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from device_probe import Probe
from fedinvert.attacks import ATTACKS
from fedinvert.attacks.projections import project_l1_ball, project_l1_ball_around
from fedinvert.cli import main
from fedinvert.determinism import policy
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation

pytestmark = pytest.mark.cuda

#: |PSNR(cuda) − PSNR(cpu)| allowed for the short runs below: both follow the same float32 objective from the
#: same start, and differ only by reduction order, which a few hundred Adam steps amplify a little.
PSNR_TOLERANCE_DB = 1.0

IG_RUN = ["attack=inverting_gradients", "attack.iterations=100", "dataset=synthetic", "batch_size=4",
          "image_size=16", "model=convnet", "model.width=0.5", "seed=0"]
GIFD_RUN = ["attack=gifd", "prior=face-dcgan", "attack.steps_per_stage=10", "attack.restarts=1",
            "dataset=synthetic", "batch_size=2", "image_size=32", "seed=0"]


def run_cli(args: list[str], device: str, out: Path) -> tuple[dict, dict, dict]:
    """One run through the command line; (metrics.json, run.json, tensors) of its folder."""
    code = main(["attack", *args, f"device={device}", "progress=false", "attack.compile=false", f"out={out}"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / "run.json").read_text())
    return metrics, info, load_file(out / "tensors.safetensors")


# -- the projection --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [10, 4096, 65536])
def test_projection_on_cuda_equals_cpu_bit_for_bit_and_is_strictly_deterministic(d):
    gen = torch.Generator().manual_seed(d)
    x = torch.randn(6, d, generator=gen) * torch.logspace(-2, 2, 6)[:, None]
    r = x.abs().sum(1) * torch.tensor([0.001, 0.1, 0.5, 0.9, 0.999, 2.0])
    cpu = project_l1_ball(x, r)
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)  # strict: a nondeterministic kernel raises
    try:
        first = project_l1_ball(x.cuda(), r.cuda())
        second = project_l1_ball(x.cuda(), r.cuda())
        around = project_l1_ball_around(x.cuda(), torch.zeros_like(x).cuda(), r.cuda())
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    assert first.dtype == torch.float32 and first.device.type == "cuda"
    assert torch.equal(first, second)
    assert torch.equal(first.cpu(), cpu), (first.cpu() - cpu).abs().max()
    torch.testing.assert_close(around.cpu(), cpu, rtol=0, atol=0)


# -- whole runs --------------------------------------------------------------------------------------------------
def test_inverting_gradients_on_cuda_matches_cpu_and_reruns_bit_identically(tmp_path):
    cpu, _, _ = run_cli(IG_RUN, "cpu", tmp_path / "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gpu, info, tensors = run_cli(IG_RUN, "cuda", tmp_path / "cuda")
    again, _, tensors_again = run_cli(IG_RUN, "cuda", tmp_path / "again")
    nondeterministic = sorted({str(w.message)[:120] for w in caught if "deterministic" in str(w.message)})
    print("nondeterministic kernels reported in the IG run:", nondeterministic or "none")
    assert info["device"].startswith("cuda") and info["determinism"]["cuda"]["tf32"] is False
    assert np.isfinite([gpu["psnr"], gpu["ssim"], gpu["mse"], gpu["distance"]]).all()
    assert abs(gpu["psnr"] - cpu["psnr"]) <= PSNR_TOLERANCE_DB, (gpu["psnr"], cpu["psnr"])
    assert torch.equal(tensors["reconstruction"], tensors_again["reconstruction"]), nondeterministic
    assert gpu["psnr"] == again["psnr"]


def test_gifd_on_cuda_matches_cpu_stage_by_stage(tmp_path):
    pytest.importorskip("gan_face_generate")
    cpu, _, _ = run_cli(GIFD_RUN, "cpu", tmp_path / "cpu")
    gpu, info, _ = run_cli(GIFD_RUN, "cuda", tmp_path / "cuda")
    assert info["determinism"]["cuda"]["deterministic_algorithms"] == "warn_only"
    assert np.isfinite([gpu["psnr"], gpu["ssim"], gpu["mse"]]).all()
    assert [s["stage"] for s in gpu["stages"]] == [s["stage"] for s in cpu["stages"]]
    for ours, theirs in zip(gpu["stages"], cpu["stages"], strict=True):
        assert np.isfinite(ours["psnr"]) and np.isfinite(ours["distance"])
        assert abs(ours["psnr"] - theirs["psnr"]) <= PSNR_TOLERANCE_DB, (ours, theirs)


# -- inside the step ---------------------------------------------------------------------------------------------
def _observation() -> Observation:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=gen)
    labels = torch.tensor([1, 4])
    model = build_model("convnet", in_channels=3, num_classes=10, image_size=32, width=0.5, seed=0)
    update = FedSGDClient(mode="eval").update(model, (images - 0.5) / 0.5, labels)
    return Observation(model=model, update=update, kind="gradient", image_shape=(3, 32, 32), num_classes=10,
                       normalization=((0.5,) * 3, (0.5,) * 3), batch_size=2)


def _probed(name: str, keywords: dict) -> tuple[Probe, int]:
    """A probed run on CUDA; (probe, number of synchronising CUDA calls PyTorch's sync debug mode reported)."""
    attack = ATTACKS.build(name, compile=False, device="cuda", log_every=10_000, **keywords)
    obs = _observation()
    with warnings.catch_warnings(record=True) as caught, policy("cuda", seed=0):
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with Probe() as probe:
                rec = attack.reconstruct(obs, rng=torch.Generator().manual_seed(0))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(rec.images).all()
    return probe, sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("name", ["inverting_gradients", "gifd"])
def test_steps_on_cuda_make_no_float64_and_no_host_sync(name):
    # Prepare: the same attack with 3 and with 9 steps (per stage), never logging before the end.
    if name == "gifd":
        pytest.importorskip("gan_face_generate")
        from fedinvert.priors import FaceDCGAN

        prior = FaceDCGAN()

        def keywords(steps: int) -> dict:
            return {"prior": prior, "steps_per_stage": steps, "restarts": 2}
    else:

        def keywords(steps: int) -> dict:
            return {"iterations": steps, "restarts": 2}

    # Execute
    short, short_syncs = _probed(name, keywords(3))
    long, long_syncs = _probed(name, keywords(9))
    # Assert: no float64 on the device; the extra steps added no host read, tensor from Python data or sync.
    assert not long.float64_on("cuda"), long.float64_on("cuda")
    assert not long.host_reads - short.host_reads, long.host_reads - short.host_reads
    assert not long.from_python - short.from_python, long.from_python - short.from_python
    assert long_syncs <= short_syncs, (short_syncs, long_syncs)


def test_the_grouped_step_on_cuda_equals_the_looped_step():
    # Prepare: a BatchNorm ConvNet observation; three restarts of random dummy pixels on the GPU
    from fedinvert.attacks.objectives import GradientMatcher, total_variation

    obs = _observation()
    labels = torch.tensor([1, 4]).cuda()  # the labels the observation was made with

    def matcher(**grouped: bool) -> GradientMatcher:
        return GradientMatcher(obs, distance="cosine", render=lambda v: (v, labels), device="cuda",
                               regularizer=lambda inputs, _: 1e-2 * total_variation(inputs), **grouped)

    x = torch.randn(3, obs.batch_size, *obs.image_shape, generator=torch.Generator().manual_seed(3)).cuda()
    with policy("cuda", seed=0):
        looped, grouped = matcher(), matcher(grouped_restarts=True)
        # Execute: the first grouped call checks itself against the looped step; the second runs grouped alone
        steps = [(looped.step([x]), grouped.step([x])) for _ in range(2)]
    # Assert: each restart's gradient, loss and distance agree with the looped step's; grouping was kept
    for ((g_looped,), l_looped, d_looped), ((g_grouped,), l_grouped, d_grouped) in steps:
        assert float((g_grouped - g_looped).norm() / g_looped.norm()) < 1e-4
        torch.testing.assert_close(d_grouped, d_looped, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(l_grouped, l_looped, rtol=1e-4, atol=1e-6)
    assert grouped.grouped_refusal is None and grouped._grouped is not None
