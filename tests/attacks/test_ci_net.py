"""CI-Net: an untrained generator's parameters searched so that its output's gradient matches the observed one."""

import pytest
import torch

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.generative.ci_net import ImageGenerator
from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation
from fedinvert.runner import run

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["attack=ci_net", "model=lenet-dlg", "dataset=fashion-mnist", "image_size=16", "batch_size=1",
        "device=cpu", "progress=false", "metrics.st_lpips=false", "attack.compile=false"]


def test_recovers_a_fashion_mnist_image_from_the_sigmoid_lenet():
    """On DLG's sigmoid LeNet one image leaks far above the no-leak reference of its own batch."""
    result = run(resolve_config([*BASE, "attack.steps=300", "dataset.indices=[0]", "seed=0"]), write=False)
    m = result.metrics
    print(f"PSNR {m['psnr']:.2f}, reference {m['reference']['psnr']:.2f}, leakage {m['leakage_db']:+.2f}")
    assert m["leakage_db"] > 8.0  # measured +33.45 dB at 300 steps (16 px)
    assert m["iterations"] == 300
    assert result.reconstruction.extras["generator_parameters"] > 100_000  # over-parameterised for one 16 px image


@pytest.mark.parametrize("size", [(1, 28, 28), (3, 30, 30), (3, 32, 24)])
def test_generator_renders_the_observed_shape_in_the_unit_box(size):
    gen = ImageGenerator(image_shape=size, code=16, width=8)
    with torch.no_grad():
        out = gen(torch.randn(3, 16))
    assert out.shape == (3, *size) and float(out.min()) >= 0 and float(out.max()) <= 1


def _observation(activation="sigmoid"):
    torch.manual_seed(0)
    model = build_model("lenet-dlg", in_channels=1, num_classes=10, image_size=16, activation=activation)
    images = torch.rand(2, 1, 16, 16)
    update = FedSGDClient().update(model, (images - 0.5) / 0.5, torch.tensor([1, 2]))
    return Observation(model=model, update=update, kind="gradient", image_shape=(1, 16, 16), num_classes=10,
                       normalization=((0.5,), (0.5,)), batch_size=2)


def test_seeded_runs_repeat_and_leave_the_global_rng_alone():
    obs = _observation()
    attack = ATTACKS.build("ci_net", steps=5, restarts=2, width=8, code=8, compile=False, device="cpu")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = attack.reconstruct(obs, rng=torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(1), before)  # the generators' initialisation drew from a forked RNG
    b = attack.reconstruct(obs, rng=torch.Generator().manual_seed(7))
    assert torch.equal(a.images, b.images) and a.images.shape == (2, 1, 16, 16)
    assert a.iterations == 10 and a.extras["restart"] in (0, 1)


@pytest.mark.parametrize("key,value", [("steps", 0), ("restarts", -1), ("lr", 0), ("lr", float("nan")),
                                        ("width", 1), ("code", 2.5), ("tv", -1.0), ("fedavg", "perhaps")])
def test_bad_keywords_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        ATTACKS.build("ci_net", **{key: value})


def test_relu_victim_is_a_config_choice_of_lenet_dlg():
    with pytest.raises(ConfigError, match="activation"):
        build_model("lenet-dlg", in_channels=1, num_classes=10, image_size=16, activation="tanh")
    relu = build_model("lenet-dlg", in_channels=1, num_classes=10, image_size=16, activation="relu")
    assert any(isinstance(m, torch.nn.ReLU) for m in relu.modules())
