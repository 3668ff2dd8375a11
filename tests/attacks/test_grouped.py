"""Restarts as groups of one victim: the grouped victim and the grouped step against plain autograd."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedinvert.attacks.grouped import GroupedVictim, GroupingRefused
from fedinvert.attacks.objectives import GradientMatcher, total_variation
from fedinvert.fl.fedsgd import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, BATCH, CLASSES = 16, 2, 5
LABELS = torch.tensor([0, 3])


def victim(name: str, mode: str = "eval", **options: object) -> nn.Module:
    model = build_model(name, in_channels=3, num_classes=CLASSES, image_size=SIZE, seed=0, **options)
    if mode == "train" or name.startswith(("convnet", "resnet")):  # running statistics off their fresh (0, 1)
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 1.5 + 0.2)
    return model.train(mode == "train")


def observation(model: nn.Module) -> Observation:
    private = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    mode = "train" if model.training else "eval"
    return Observation(
        model=model, update=FedSGDClient(mode=mode).update(model, private, LABELS), kind="gradient",
        image_shape=(3, SIZE, SIZE), num_classes=CLASSES, normalization=((0.5,) * 3, (0.5,) * 3), batch_size=BATCH,
    )


def start(restarts: int) -> Tensor:
    return torch.randn(restarts, BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    ("name", "mode", "options"),
    [("lenet-dlg", "eval", {}), ("lenet5", "eval", {}), ("convnet", "eval", {}), ("convnet", "train", {}),
     ("convnet", "eval", {"norm": "group"}), ("resnet18", "eval", {"width": 0.25}), ("mlp", "eval", {})],
)
def test_each_restart_runs_with_its_own_parameters(name: str, mode: str, options: dict) -> None:
    # Prepare: three restarts, each with different weights (a perturbed copy) and its own batch; in float64, so
    # the comparison is of the arithmetic, not of float32 rounding (which kernels a CPU picks moves a ResNet's
    # logits by 2e-4)
    model = victim(name, mode, **options).double()
    grouped = GroupedVictim(model)
    draw = torch.Generator().manual_seed(4)
    named = dict(model.named_parameters())
    params = {n: torch.stack([p.detach() + 0.1 * r * torch.randn(p.shape, generator=draw, dtype=p.dtype)
                              for r in range(3)]) for n, p in named.items()}
    x = start(3).double()
    # Execute
    out = grouped.logits(params, x.reshape(3 * BATCH, 3, SIZE, SIZE))
    # Assert: restart r's rows are the victim's output with weights params[...][r] on batch r
    for r in range(3):
        reference = torch.func.functional_call(copy.deepcopy(model), {n: p[r] for n, p in params.items()}, (x[r],))
        torch.testing.assert_close(out[r * BATCH:(r + 1) * BATCH], reference, rtol=1e-10, atol=1e-12)
    assert grouped.names == list(named)


def reference_step(obs: Observation, x: Tensor, distance: str) -> tuple[Tensor, Tensor, Tensor]:
    """Plain autograd, one restart at a time."""
    model = copy.deepcopy(obs.model)
    params = list(model.parameters())
    target = obs.update_list()
    grads, losses, dists = [], [], []
    for r in range(x.shape[0]):
        leaf = x[r].detach().clone().requires_grad_(True)
        dummy = torch.autograd.grad(F.cross_entropy(model(leaf), LABELS), params, create_graph=True)
        if distance == "cosine":
            dot = sum((d * t).sum() for d, t in zip(dummy, target, strict=True))
            norms = torch.sqrt(sum((d * d).sum() for d in dummy)) * torch.sqrt(sum((t * t).sum() for t in target))
            dist = 1 - dot / norms
        else:
            dist = sum(((d - t) ** 2).sum() for d, t in zip(dummy, target, strict=True))
        loss = dist + 1e-2 * total_variation(leaf)
        grads.append(torch.autograd.grad(loss, leaf)[0])
        losses.append(loss.detach())
        dists.append(dist.detach())
    return torch.stack(grads), torch.stack(losses), torch.stack(dists)  # type: ignore[arg-type]


def grouped_matcher(obs: Observation, distance: str = "cosine", **options: object) -> GradientMatcher:
    return GradientMatcher(obs, distance=distance, render=lambda v: (v, LABELS),
                           regularizer=lambda inputs, _: 1e-2 * total_variation(inputs), grouped_restarts=True,
                           **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "mode"), [("lenet-dlg", "eval"), ("convnet", "eval"), ("convnet", "train")])
@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_the_grouped_step_equals_plain_autograd_per_restart(name: str, mode: str, distance: str) -> None:
    obs = observation(victim(name, mode))
    x = start(3)
    ref_grad, ref_loss, ref_dist = reference_step(obs, x, distance)
    matcher = grouped_matcher(obs, distance)
    for _ in range(2):  # the first call is checked against the looped step; the second runs grouped alone
        (grad,), loss, dist = matcher.step([x])
        assert float((grad - ref_grad).norm() / ref_grad.norm()) < 1e-4
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(dist, ref_dist, rtol=1e-4, atol=1e-6)
    assert matcher.grouped_refusal is None and matcher._grouped is not None
    assert matcher.evaluations == 6  # three restarts a step; the check's looped step is not counted


def test_held_out_coordinates_stay_out_of_the_grouped_distance() -> None:
    obs = observation(victim("lenet-dlg"))
    x = start(2)
    looped = GradientMatcher(obs, distance="cosine", render=lambda v: (v, LABELS), holdout=0.3)
    grouped = GradientMatcher(obs, distance="cosine", render=lambda v: (v, LABELS), holdout=0.3, grouped_restarts=True)
    for _ in range(2):
        (g_looped,), _, d_looped = looped.step([x])
        (g_grouped,), _, d_grouped = grouped.step([x])
        torch.testing.assert_close(d_grouped, d_looped, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g_grouped, g_looped, rtol=1e-3, atol=1e-6)
    assert grouped.grouped_refusal is None


class BareParameter(nn.Module):
    """A victim that multiplies by a parameter of its own: no layer to group."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.fc = nn.Linear(3 * SIZE * SIZE, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(x, 1) * self.scale)


class MixesSamples(nn.Module):
    """A victim whose forward centres the batch outside any normalisation layer: grouping would mix restarts."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * SIZE * SIZE, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        flat = torch.flatten(x, 1)
        return self.fc(flat - flat.mean(0, keepdim=True))


def test_what_cannot_be_grouped_runs_looped_and_says_why() -> None:
    with pytest.raises(GroupingRefused, match="'scale'"):
        GroupedVictim(BareParameter())
    obs = observation(BareParameter())
    assert "'scale'" in (grouped_matcher(obs).grouped_refusal or "")
    plain = observation(victim("lenet-dlg"))
    assert "layer_cosine" in (grouped_matcher(plain, "layer_cosine").grouped_refusal or "")
    assert "pruned" in (grouped_matcher(plain, prune_ratio=0.5).grouped_refusal or "")
    delta = Observation(model=plain.model, update=plain.update, kind="weight_delta", image_shape=plain.image_shape,
                        num_classes=CLASSES, normalization=plain.normalization, batch_size=BATCH)
    assert "FedAvg" in (grouped_matcher(delta, fedavg="weak").grouped_refusal or "")
    assert "transform" in (grouped_matcher(plain, update_transform=lambda u: u).grouped_refusal or "")


def test_a_victim_that_mixes_samples_fails_the_first_step_check_and_runs_looped() -> None:
    obs = observation(MixesSamples())
    x = start(3)
    matcher = grouped_matcher(obs)
    looped = GradientMatcher(obs, distance="cosine", render=lambda v: (v, LABELS),
                             regularizer=lambda inputs, _: 1e-2 * total_variation(inputs))
    for _ in range(2):
        (grad,), _, dist = matcher.step([x])
        (ref,), _, ref_dist = looped.step([x])
        torch.testing.assert_close(grad, ref)  # the looped result, exactly
        torch.testing.assert_close(dist, ref_dist)
    assert matcher.grouped_refusal == "its first step disagreed with the looped step" and matcher._grouped is None


class FixedBatch(nn.Module):
    """A victim that reshapes with its batch size written in: the stacked restarts' batch makes it raise."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * SIZE * SIZE, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.reshape(BATCH, 3 * SIZE * SIZE))


class PlainNorm(nn.Module):
    """A victim with a BatchNorm without affine parameters: nothing per restart to swap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4, affine=False)
        self.fc = nn.Linear(4 * SIZE * SIZE, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(torch.sigmoid(self.norm(self.conv(x))), 1))


def test_a_victim_that_fails_on_the_stacked_batch_runs_looped_and_says_why() -> None:
    obs = observation(FixedBatch())
    x = start(3)
    matcher = grouped_matcher(obs)
    (grad,), _, dist = matcher.step([x])
    ref_grad, _, ref_dist = reference_step(obs, x, "cosine")
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < 1e-4
    torch.testing.assert_close(dist, ref_dist, rtol=1e-4, atol=1e-6)
    assert (matcher.grouped_refusal or "").startswith("its first step failed (RuntimeError") and matcher._grouped is None


@pytest.mark.parametrize(("mode", "grouped"), [("eval", True), ("train", False)])
def test_a_normalisation_without_parameters_stays_as_it_is(mode: str, grouped: bool) -> None:
    # eval: running statistics, per sample, so grouping holds; train: batch statistics over the stacked
    # restarts would mix them, which the first step's check catches
    obs = observation(victim_in_mode(PlainNorm(), mode))
    x = start(3)
    ref_grad, _, ref_dist = reference_step(obs, x, "cosine")
    matcher = grouped_matcher(obs)
    for _ in range(2):
        (grad,), _, dist = matcher.step([x])
        assert float((grad - ref_grad).norm() / ref_grad.norm()) < 1e-4
        torch.testing.assert_close(dist, ref_dist, rtol=1e-4, atol=1e-6)
    assert (matcher._grouped is not None) == grouped


def victim_in_mode(model: nn.Module, mode: str) -> nn.Module:
    with torch.no_grad():  # running statistics off their fresh (0, 1)
        model.train()(torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 1.5 + 0.2)
    return model.train(mode == "train")
