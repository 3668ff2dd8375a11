"""Victim classifiers: shapes, seeding, DLG's initialisation, torch.func and double backward."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

from fedinvert.errors import ConfigError
from fedinvert.models import (
    MIN_IMAGE_SIZE,
    MODELS,
    build_model,
    last_linear,
    model_options,
    penultimate_features,
)

NAMES = MODELS.names()
# ResNets keep their structure at a quarter of the width; that keeps the shape and autograd tests fast.
SMALL = {"resnet18": {"width": 0.25}, "resnet18-imagenet": {"width": 0.25}, "resnet34": {"width": 0.25}}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small convolutions run far faster on one thread than on two cores shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(name: str, *, in_channels: int = 3, image_size: int = 16, seed: int = 0) -> nn.Module:
    return build_model(
        name, in_channels=in_channels, num_classes=5, image_size=image_size, seed=seed, **SMALL.get(name, {})
    )


def test_registry_holds_the_builtin_victims() -> None:
    assert set(NAMES) == {"mlp", "lenet-dlg", "lenet5", "convnet", "resnet18", "resnet18-imagenet", "resnet34", "vit"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_shape(name: str, in_channels: int) -> None:
    for size in (28, 32, 64):
        model = small_model(name, in_channels=in_channels, image_size=size)
        logits = model(torch.rand(2, in_channels, size, size))
        assert logits.shape == (2, 5)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_minimum_resolution(name: str) -> None:
    model = small_model(name, image_size=MIN_IMAGE_SIZE)
    assert model(torch.rand(2, 3, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE)).shape == (2, 5)
    with pytest.raises(ConfigError, match="image_size must be at least 8"):
        small_model(name, image_size=MIN_IMAGE_SIZE - 1)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights_and_global_rng_untouched(name: str) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = small_model(name, seed=7).state_dict()
    b = small_model(name, seed=7).state_dict()
    c = small_model(name, seed=8).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert all(not torch.equal(a[k], c[k]) for k in weights)


def test_lenet_dlg_draws_every_parameter_from_uniform_half() -> None:
    model = build_model("lenet-dlg", in_channels=3, num_classes=10, image_size=32)
    values = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert values.min() >= -0.5 and values.max() <= 0.5
    assert values.min() < -0.49 and values.max() > 0.49  # the full range, not a fan-in scaled one
    assert abs(values.mean().item()) < 0.02
    for p in model.parameters():  # biases too
        assert p.detach().abs().max() > 0.2
    assert last_linear(model).in_features == 768  # DLG's LeNet at 32 px


def test_resnet18_matches_torchvision_sizes_and_names() -> None:
    model = build_model("resnet18", in_channels=3, num_classes=10, image_size=32)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    names = dict(model.named_parameters())
    for key in (
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "fc.weight",
    ):
        assert key in names
    assert names["conv1.weight"].shape == (64, 3, 3, 3)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    imagenet = build_model("resnet18-imagenet", in_channels=3, num_classes=10, image_size=64)
    assert (
        sum(p.numel() for p in imagenet.parameters()) == 11_181_642
    )  # torchvision's resnet18(num_classes=10)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    resnet34 = build_model("resnet34", in_channels=3, num_classes=10, image_size=32, width=0.25)
    assert [len(layer) for layer in (resnet34.layer1, resnet34.layer2, resnet34.layer3, resnet34.layer4)] == [
        3,
        4,
        6,
        3,
    ]


def test_lenet5_classic_size_and_activation() -> None:
    model = build_model("lenet5", in_channels=1, num_classes=10, image_size=28)
    assert sum(p.numel() for p in model.parameters()) == 61_706  # LeNet-5 on MNIST: 16·5·5 = 400 features
    assert any(isinstance(m, nn.Sigmoid) for m in model.modules())
    relu = build_model("lenet5", in_channels=1, num_classes=10, image_size=28, activation="relu")
    assert any(isinstance(m, nn.ReLU) for m in relu.modules())
    with pytest.raises(ConfigError, match="activation must be one of sigmoid, relu"):
        build_model("lenet5", in_channels=1, num_classes=10, image_size=28, activation="tanh")


def test_convnet_width_and_norm_options() -> None:
    model = build_model("convnet", in_channels=3, num_classes=10, image_size=32, width=2)
    assert [
        model.layer1.conv.out_channels,
        model.layer2.conv.out_channels,
        model.layer3.conv.out_channels,
        model.layer4.conv.out_channels,
    ] == [64, 128, 128, 256]
    group = build_model("convnet", in_channels=3, num_classes=10, image_size=32, norm="group", width=0.375)
    norms = [m for m in group.modules() if isinstance(m, nn.GroupNorm)]
    assert [n.num_groups for n in norms] == [6, 8, 8, 8]  # 12 channels -> 6 groups, the largest divisor <= 8
    assert not any(isinstance(m, nn.BatchNorm2d) for m in group.modules())
    plain = build_model("convnet", in_channels=3, num_classes=10, image_size=32, norm="none")
    assert plain.layer1.conv.bias is not None
    resnet = build_model("resnet18", in_channels=3, num_classes=10, image_size=32, norm="group", width=0.25)
    assert isinstance(resnet.bn1, nn.GroupNorm)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"no option 'depth'; valid options: norm, width"):
        build_model("convnet", in_channels=3, num_classes=10, image_size=32, depth=3)
    with pytest.raises(ConfigError, match="'stem'"):  # a preset of the registered name, not a user option
        build_model("resnet18", in_channels=3, num_classes=10, image_size=32, stem="imagenet")
    with pytest.raises(ConfigError, match="norm must be one of"):
        build_model("convnet", in_channels=3, num_classes=10, image_size=32, norm="layer")
    with pytest.raises(ConfigError, match="norm must be one of batch, group"):
        build_model("resnet18", in_channels=3, num_classes=10, image_size=32, norm="none")
    with pytest.raises(ConfigError, match="width must be a positive"):
        build_model("convnet", in_channels=3, num_classes=10, image_size=32, width=0)
    with pytest.raises(ConfigError, match="unknown model 'lenet'"):
        build_model("lenet", in_channels=3, num_classes=10, image_size=32)
    with pytest.raises(ConfigError, match="num_classes must be at least 2"):
        build_model("convnet", in_channels=3, num_classes=1, image_size=32)
    assert model_options("lenet-dlg") == ["activation"]
    assert model_options("resnet18") == ["norm", "width"]


@pytest.mark.parametrize("name", NAMES)
def test_double_backward(name: str) -> None:
    """Gradient matching differentiates the parameter gradient with respect to the input."""
    model = small_model(name)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    y = torch.tensor([1, 3])
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params, create_graph=True)
    distance = sum(g.square().sum() for g in grads)
    (dx,) = torch.autograd.grad(distance, x)
    assert dx.shape == x.shape
    assert torch.isfinite(dx).all() and dx.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_functional_call_and_func_grad(name: str, mode: str) -> None:
    model = small_model(name).train(mode == "train")
    params = {k: v.detach() for k, v in model.named_parameters()}
    # Buffers go in as an argument, not a closure: train-mode BatchNorm updates its running statistics in place.
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    x = torch.rand(2, 3, 16, 16)
    y = torch.tensor([0, 4])

    def loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, (p, b), (x,)), y)

    grads = grad(loss)(params, buffers)
    reference = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    assert set(grads) == set(params)
    for (key, _), ref in zip(model.named_parameters(), reference, strict=True):
        torch.testing.assert_close(grads[key], ref)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_restarts_of_gradient_matching(name: str) -> None:
    """One batched call evaluates the gradient-matching distance of several dummy batches (eval mode)."""
    model = small_model(name).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    y = torch.tensor([0, 4])

    def distance(dummy: torch.Tensor) -> torch.Tensor:
        def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return nn.functional.cross_entropy(functional_call(model, (p, buffers), (dummy,)), y)

        return sum(g.square().sum() for g in grad(loss)(params).values())

    dummies = torch.rand(3, 2, 3, 16, 16)
    batched = torch.func.vmap(distance)(dummies)
    torch.testing.assert_close(batched, torch.stack([distance(d) for d in dummies]), rtol=1e-4, atol=1e-6)


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
        self.hidden = nn.Linear(4 * 6 * 6, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.body(x))))


def test_helpers_work_on_any_module() -> None:
    model = UserNet()
    assert last_linear(model) is model.head
    x = torch.rand(5, 1, 8, 8)
    features = penultimate_features(model, x)
    assert features.shape == (5, 7)
    torch.testing.assert_close(model.head(features), model(x))
    assert not model.head._forward_pre_hooks  # the hook is removed
    with pytest.raises(ConfigError, match="has no nn.Linear"):
        last_linear(nn.Sequential(nn.Conv2d(1, 1, 3)))


@pytest.mark.parametrize("name", NAMES)
def test_penultimate_features_of_builtin_victims(name: str) -> None:
    model = small_model(name).eval()
    x = torch.rand(2, 3, 16, 16)
    features = penultimate_features(model, x)
    assert features.shape == (2, last_linear(model).in_features)
    torch.testing.assert_close(last_linear(model)(features), model(x))
