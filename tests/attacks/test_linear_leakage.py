"""Linear-layer leakage recovers inputs of fully connected layers exactly, on real images."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.analytic.linear_leakage import linear_layers
from fedinvert.config import resolve_config
from fedinvert.data import load_batch
from fedinvert.errors import ConfigError
from fedinvert.fl import FedSGDClient
from fedinvert.metrics import match, psnr_per_image
from fedinvert.models import build_model, penultimate_features
from fedinvert.observation import Observation
from fedinvert.runner import run


def _observe(model, batch, channels, size):
    norm = ((0.5,) * channels, (0.5,) * channels)
    inputs = (batch.images - 0.5) / 0.5
    update = FedSGDClient(mode="eval").update(model, inputs, batch.labels)
    obs = Observation(model=model, update=update, kind="gradient", image_shape=(channels, size, size),
                      num_classes=10, normalization=norm, batch_size=len(batch.labels))
    return obs, inputs


def _layer_inputs(model, inputs):
    seen = {}
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, a[0].detach()))
               for n, m in linear_layers(model)]
    with torch.no_grad():
        model.eval()(inputs)
    for h in handles:
        h.remove()
    return seen


def _relative_error(found, true):
    return float((found - true).norm() / true.norm())


def test_one_fashion_mnist_image_read_exactly_from_an_mlp(tmp_path):
    # Prepare: one Fashion-MNIST test image through `mlp` (its first layer sees the flattened image)
    args = ["attack=linear_leakage", "model=mlp", "dataset=fashion-mnist", "dataset.indices=[7]", "image_size=28",
            "batch_size=1", "seed=0", "progress=false", "device=cpu", f"out={tmp_path / 'run'}"]
    # Execute
    result = run(resolve_config(args))
    # Assert: measured 100 dB (the cap: the image to float precision) and the iDLG label; the recovered
    # features are saved as tensors, run.json names where
    assert result.reconstruction.extras["images_recovered"]
    assert result.metrics["psnr"] >= 60.0
    assert result.metrics["label_accuracy"] == 1.0
    saved = load_file(tmp_path / "run" / "tensors.safetensors")
    assert saved["extras.features.layers.fc1"].shape == (1, 784)
    details = json.loads((tmp_path / "run" / "run.json").read_text())["attack_details"]
    assert details["features"]["layers.fc1"] == "tensors.safetensors:extras.features.layers.fc1 (1, 784)"


def test_unique_labels_give_each_photo_its_penultimate_features():
    # Prepare: 6 photo crops with different labels through convnet (a convolutional first layer)
    batch = load_batch("photos", batch_size=6, image_size=32, unique_labels=True, num_classes=10)
    model = build_model("convnet", in_channels=3, num_classes=10, image_size=32, seed=0)
    obs, inputs = _observe(model, batch, 3, 32)
    # Execute
    rec = ATTACKS.build("linear_leakage", device="cpu").reconstruct(obs)
    # Assert: every sample's features, in the order of the recovered labels; measured ~6e-8 relative error
    true = penultimate_features(model.eval(), inputs).detach()
    order = [int((batch.labels == label).nonzero()) for label in rec.labels]
    assert sorted(rec.labels.tolist()) == sorted(batch.labels.tolist())
    assert _relative_error(rec.extras["features"]["fc"], true[order]) <= 1e-5
    assert not rec.extras["images_recovered"]


def test_unique_labels_read_the_images_when_the_classifier_is_the_first_layer():
    # Prepare: 4 Fashion-MNIST images with different labels through a softmax regression (one linear layer)
    batch = load_batch("fashion-mnist", batch_size=4, image_size=28, unique_labels=True, num_classes=10)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    obs, _ = _observe(model, batch, 1, 28)
    # Execute
    rec = ATTACKS.build("linear_leakage", device="cpu").reconstruct(obs)
    # Assert
    psnr = psnr_per_image(batch.images, rec.images[match(batch.images, rec.images)])
    assert rec.extras["images_recovered"] and float(psnr.min()) >= 60.0


def test_every_fully_connected_layer_of_lenet5_gives_its_input():
    # Prepare: one photo crop through LeNet-5 (ReLU), three fully connected layers behind two convolutions
    batch = load_batch("photos", batch_size=1, indices=[2], image_size=32)
    model = build_model("lenet5", in_channels=3, num_classes=10, image_size=32, seed=0, activation="relu")
    obs, inputs = _observe(model, batch, 3, 32)
    # Execute
    rec = ATTACKS.build("linear_leakage", device="cpu").reconstruct(obs)
    # Assert: fc1's input (the flattened conv features), fc2's and fc3's, each to 1e-5 relative error
    true = _layer_inputs(model, inputs)
    assert set(rec.extras["features"]) == set(true) == {"classifier.fc1", "classifier.fc2", "classifier.fc3"}
    for name, features in rec.extras["features"].items():
        assert _relative_error(features, true[name]) <= 1e-5, name


@pytest.mark.parametrize("kwargs", [{"tolerance": 1.0}, {"tolerance": -0.1}, {"iterations": 0}])
def test_bad_keywords_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="attack\\."):
        ATTACKS.build("linear_leakage", device="cpu", **kwargs)
