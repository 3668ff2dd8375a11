"""LTI: an inversion network trained on auxiliary batches of the other split reads the observed gradient."""

import pytest
import torch

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.generative.lti import CountSketch
from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError, ObservationError
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import LocalTraining, Observation
from fedinvert.runner import run

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["attack=lti", "model=lenet-dlg", "dataset=fashion-mnist", "image_size=16", "batch_size=1", "device=cpu",
        "progress=false", "metrics.st_lpips=false", "attack.aux_batches=400", "attack.epochs=15", "attack.hidden=256",
        "attack.sketch=512"]


def test_inverts_a_fashion_mnist_gradient_and_reuses_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDINVERT_CACHE", str(tmp_path))
    cfg = [*BASE, "dataset.indices=[3]", "seed=0"]
    first = run(resolve_config(cfg), write=False)
    m = first.metrics
    print(f"PSNR {m['psnr']:.2f}, reference {m['reference']['psnr']:.2f}, leakage {m['leakage_db']:+.2f}")
    assert m["leakage_db"] > 2.0  # measured +5.46 dB (400 auxiliary batches of the train split, 16 px)
    assert not first.reconstruction.extras["cached"] and m["iterations"] == 401
    assert len(list((tmp_path / "lti").glob("*.safetensors"))) == 1
    again = run(resolve_config(cfg), write=False)
    assert again.reconstruction.extras["cached"] and again.metrics["iterations"] == 1
    assert torch.equal(again.reconstruction.images, first.reconstruction.images)


def test_sketch_is_linear_and_seeded():
    sketch = CountSketch(1000, 64, seed=3)
    x, y = torch.randn(2, 1000), torch.randn(2, 1000)
    assert torch.allclose(sketch(x + 2 * y), sketch(x) + 2 * sketch(y), atol=1e-5)
    assert torch.equal(CountSketch(1000, 64, seed=3)(x), sketch(x))
    assert torch.allclose(sketch(x).pow(2).sum(), x.pow(2).sum(), rtol=0.5)  # norms kept on average


def _obs(kind="gradient"):
    torch.manual_seed(0)
    model = build_model("lenet-dlg", in_channels=1, num_classes=10, image_size=16)
    update = FedSGDClient().update(model, torch.rand(1, 1, 16, 16), torch.tensor([1]))
    return Observation(model=model, update=update, kind=kind, image_shape=(1, 16, 16), num_classes=10,
                       normalization=((0.5,), (0.5,)), batch_size=1,
                       local_training=LocalTraining() if kind == "weight_delta" else None)


def test_a_fedavg_delta_is_refused_clearly():
    with pytest.raises(ObservationError, match="FedSGD gradients"):
        ATTACKS.build("lti", device="cpu").reconstruct(_obs("weight_delta"))


@pytest.mark.parametrize("key,value", [("aux_batches", 0), ("sketch", -1), ("hidden", 0), ("epochs", 1.5),
                                        ("lr", 0), ("lr", float("inf")), ("aux", ""), ("train_batch", True)])
def test_bad_keywords_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        ATTACKS.build("lti", **{key: value})


def test_an_unknown_aux_data_set_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDINVERT_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="no-such"):
        ATTACKS.build("lti", aux="no-such", aux_batches=2, epochs=1, device="cpu").reconstruct(_obs())
