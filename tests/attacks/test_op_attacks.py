"""Optimisation-based attacks reach real numbers on real photos."""

import torch

from fedinvert.config import resolve_config
from fedinvert.metrics import psnr_per_image
from fedinvert.runner import build_scenario, run


def _run(args):
    return run(resolve_config(args), write=False)


def test_idlg_recovers_a_photo_crop_on_lenet_dlg(fast_cfg):
    # Prepare: DLG's sigmoid LeNet with U(-0.5, 0.5) weights, one 32x32 crop of a real photo.
    args = ["attack=idlg", "model=lenet-dlg", "dataset=photos", "dataset.indices=[1]", "image_size=32",
            "batch_size=1", "attack.iterations=100", "seed=0", *fast_cfg]
    # Execute
    result = _run(args)
    # Assert: high-fidelity recovery and the exact label.
    assert result.metrics["psnr"] >= 30.0, result.metrics["psnr"]
    assert result.metrics["label_accuracy"] == 1.0
    assert result.reconstruction.iterations > 100  # L-BFGS evaluates several times per step


def test_inverting_gradients_batch4_beats_its_random_start(fast_cfg):
    args = ["attack=inverting_gradients", "model=convnet", "dataset=photos", "dataset.indices=[0,1,2,3]",
            "image_size=32", "batch_size=4", "attack.iterations=300", "attack.lr=0.1", "seed=0", *fast_cfg]
    cfg = resolve_config(args)
    scenario = build_scenario(cfg)
    obs = scenario.observation
    start = obs.denormalize(torch.randn((4, *obs.image_shape))).clamp(0, 1)
    start_psnr = float(psnr_per_image(scenario.private, start).mean())
    result = run(cfg, write=False)
    # measured here: 7.1 dB at the random start, 14.5 dB after 300 signed-Adam steps
    assert result.metrics["psnr"] >= start_psnr + 6.0, (start_psnr, result.metrics["psnr"])
    assert result.metrics["label_accuracy"] == 1.0
    assert result.reconstruction.score < result.reconstruction.history[0]["distance"]


def test_same_seed_same_result_and_restart_does_not_change_the_batch(fast_cfg):
    base = ["attack=inverting_gradients", "model=convnet", "model.width=0.25", "dataset=synthetic", "image_size=16",
            "batch_size=2", "attack.iterations=5", "seed=3", *fast_cfg]
    a = _run(base)
    b = _run(base)
    assert torch.equal(a.reconstruction.images, b.reconstruction.images)
    c = _run([*base, "attack.restarts=2"])
    assert torch.equal(a.scenario.private, c.scenario.private)
    for name, tensor in a.scenario.observation.update.items():
        assert torch.equal(tensor, c.scenario.observation.update[name])
    d = _run([*base[:-len(fast_cfg) - 1], "seed=4", *fast_cfg])
    assert not torch.equal(a.scenario.private, d.scenario.private)


def test_dlg_optimises_labels_jointly(fast_cfg):
    result = _run(["attack=dlg", "model=lenet-dlg", "dataset=photos", "dataset.indices=[1]", "image_size=16",
                   "batch_size=1", "attack.iterations=30", "seed=0", *fast_cfg])
    assert result.reconstruction.labels is not None and result.reconstruction.labels.shape == (1,)
    assert result.reconstruction.images.shape == (1, 3, 16, 16)
