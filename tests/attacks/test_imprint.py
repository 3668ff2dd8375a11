"""Robbing the Fed's imprint block: the images of a batch read out exactly from its gradient."""

import pytest
import torch

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.analytic import ImprintBlock, brightness_offsets
from fedinvert.attacks.base import ServerContext
from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError, ObservationError
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation
from fedinvert.runner import run


def test_eight_fashion_mnist_images_recovered_exactly():
    # Prepare: 8 Fashion-MNIST test images through convnet behind 1000 bins placed from the train split
    args = ["attack=imprint", "threat.server=malicious", "model=convnet", "dataset=fashion-mnist", "image_size=28",
            "batch_size=8", "seed=0", "device=cpu", "progress=false"]
    # Execute
    result = run(resolve_config(args), write=False)
    # Assert: measured 8 of 8 at the 100 dB cap (benchmarks/imprint.py: 8/8 over 8 batches)
    per_image = [p["psnr"] for p in result.metrics["per_image"]]
    assert sum(p >= 60.0 for p in per_image) == 8
    assert result.reconstruction.extras["recovered"] == 8


def test_offsets_are_increasing_public_quantiles_below_every_image():
    public = torch.rand(500, 1, 8, 8)
    context = ServerContext(image_shape=(1, 8, 8), num_classes=10, normalization=((0.5,), (0.5,)), public=public)
    q = brightness_offsets(public, context, 100)
    assert q.shape == (100,) and bool((q[1:] >= q[:-1]).all())
    assert float(q[0]) < -1.0  # below the darkest possible image (-1 in this normalisation)
    measured = ((public - 0.5) / 0.5).flatten(1).mean(1).double()
    assert abs(float((measured < q[50]).double().mean()) - 0.5) < 0.01


def test_the_block_barely_changes_the_victim():
    public = torch.rand(200, 3, 16, 16)
    context = ServerContext(image_shape=(3, 16, 16), num_classes=10, normalization=((0.5,) * 3, (0.5,) * 3),
                            public=public)
    victim = build_model("convnet", in_channels=3, num_classes=10, image_size=16, seed=0).eval()
    model = ATTACKS.build("imprint", bins=100, device="cpu").modify_model(victim, context).eval()
    x = torch.randn(4, 3, 16, 16)
    assert isinstance(model.imprint, ImprintBlock)
    assert torch.allclose(model(x), victim(x), atol=1e-3)


def test_an_unmodified_model_is_refused():
    victim = build_model("convnet", in_channels=3, num_classes=10, image_size=16, seed=0)
    update = FedSGDClient().update(victim, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    obs = Observation(model=victim, update=update, kind="gradient", image_shape=(3, 16, 16), num_classes=10,
                      normalization=((0.5,) * 3, (0.5,) * 3), batch_size=2)
    with pytest.raises(ObservationError, match="no ImprintBlock"):
        ATTACKS.build("imprint", device="cpu").reconstruct(obs)


@pytest.mark.parametrize("kwargs", [{"bins": 1}, {"scale": 0.0}, {"tolerance": 1.0}])
def test_bad_keywords_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="attack\\."):
        ATTACKS.build("imprint", device="cpu", **kwargs)
