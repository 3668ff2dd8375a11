"""Gradient distances, TV and lr schedules in closed form; the gradient-matching step against plain autograd."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fedinvert.attacks.base import get_schedule, ramp_schedule, step_schedule
from fedinvert.attacks.objectives import (
    GradientMatcher,
    ImagePrior,
    MaskedCosineDistance,
    build_distance,
    chain_penalties,
    cosine_distance,
    l2_distance,
    layer_cosine_distance,
    magnitude_masks,
    restart_distance,
    total_variation,
)
from fedinvert.errors import ConfigError
from fedinvert.fl.fedsgd import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation

pytestmark = pytest.mark.usefixtures("one_thread")


def t(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


# -- distances -------------------------------------------------------------------------------------------
def test_l2_is_the_squared_distance_summed_over_tensors() -> None:
    dummy = [t(1.0, 2.0), t(3.0).view(1, 1)]
    target = [t(0.0, 0.0), t(1.0).view(1, 1)]
    assert float(l2_distance(dummy, target)) == pytest.approx(1 + 4 + 4)
    assert float(l2_distance(target, target)) == 0.0


def test_cosine_is_one_cosine_over_all_tensors() -> None:
    dummy, target = [t(1.0, 0.0), t(0.0)], [t(1.0, 1.0), t(0.0)]
    assert float(cosine_distance(dummy, target)) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    assert float(cosine_distance(target, [3 * x for x in target])) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_distance(target, [-x for x in target])) == pytest.approx(2.0, abs=1e-6)
    # global, not per tensor: [1,0],[2] against [0,1],[1] -> 1 − 2/(√5·√2)
    dummy, target = [t(1.0, 0.0), t(2.0)], [t(0.0, 1.0), t(1.0)]
    assert float(cosine_distance(dummy, target)) == pytest.approx(1 - 2 / math.sqrt(10), abs=1e-6)


def test_layer_cosine_is_the_mean_of_per_tensor_distances() -> None:
    dummy, target = [t(1.0, 0.0), t(2.0)], [t(0.0, 1.0), t(1.0)]
    # tensor 1 orthogonal (1 − 0), tensor 2 parallel (1 − 1) -> mean 0.5
    assert float(layer_cosine_distance(dummy, target)) == pytest.approx(0.5, abs=1e-6)


def test_masked_cosine_without_pruning_is_the_cosine() -> None:
    g = torch.Generator().manual_seed(0)
    target = [torch.randn(5, 4, generator=g), torch.randn(7, generator=g)]
    dummy = [torch.randn(5, 4, generator=g), torch.randn(7, generator=g)]
    masked = build_distance("masked_cosine", target, prune_ratio=0.0)
    assert isinstance(masked, MaskedCosineDistance)
    torch.testing.assert_close(masked(dummy, target), cosine_distance(dummy, target))


def test_mask_keeps_exactly_the_largest_fraction() -> None:
    # distinct magnitudes 1..20 in shuffled order, with mixed signs
    values = torch.arange(1.0, 21.0)[torch.randperm(20, generator=torch.Generator().manual_seed(1))]
    target = [values * torch.where(values % 3 == 0, -1.0, 1.0)]
    (mask,) = magnitude_masks(target, prune_ratio=0.75)
    assert int(mask.sum()) == 5
    assert set(values[mask.bool()].tolist()) == {16.0, 17.0, 18.0, 19.0, 20.0}
    # entries outside the mask do not change the distance
    distance = MaskedCosineDistance(target, prune_ratio=0.75)
    dummy = [torch.randn(20, generator=torch.Generator().manual_seed(2))]
    moved = [dummy[0] + 100.0 * (1 - mask)]
    torch.testing.assert_close(distance(moved, target), distance(dummy, target))
    with pytest.raises(ConfigError, match="prune_ratio"):
        magnitude_masks(target, prune_ratio=1.0)


def test_unknown_distance_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cosine"):
        build_distance("cosinus", [t(1.0)])


# -- image prior and schedules ---------------------------------------------------------------------------
def test_total_variation_of_a_ramp() -> None:
    # x[..., i, j] = 0.3·j − 0.2·i: every horizontal step is 0.3, every vertical one 0.2
    rows = torch.arange(6.0).view(6, 1)
    cols = torch.arange(5.0).view(1, 5)
    ramp = (0.3 * cols - 0.2 * rows).expand(2, 3, 6, 5)
    assert float(total_variation(ramp)) == pytest.approx(0.5, abs=1e-6)
    assert float(total_variation(torch.full((1, 1, 4, 4), 0.7))) == 0.0


def test_lr_schedules() -> None:
    assert ramp_schedule(0.0) == 0.0
    assert ramp_schedule(0.01) == pytest.approx(0.2)  # linear warm-up over the first 5 %
    assert ramp_schedule(0.1) == 1.0
    assert ramp_schedule(0.25) == 1.0  # the cosine decay covers the last 75 %
    assert ramp_schedule(1 - 0.75 / 2) == pytest.approx(0.5)
    assert ramp_schedule(1.0) == 0.0
    factors = [step_schedule(x) for x in (0.0, 0.374, 0.375, 0.6, 0.625, 0.874, 0.875, 0.99)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cosine = get_schedule("cosine")
    assert [cosine(x) for x in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 0.5, 0.0])
    assert get_schedule("constant")(0.7) == 1.0
    with pytest.raises(ConfigError, match="schedule"):
        get_schedule("linear-ish")


# -- the step against plain autograd ---------------------------------------------------------------------
SIZE, BATCH, CLASSES = 16, 2, 5
LABELS = torch.tensor([0, 3])


def observation(name: str, mode: str) -> Observation:
    model = build_model(name, in_channels=3, num_classes=CLASSES, image_size=SIZE, seed=0)
    if name == "convnet":  # running statistics that are not the (0, 1) of a fresh layer
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 1.5 + 0.2)
    private = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    update = FedSGDClient(mode=mode).update(model, private, LABELS)
    return Observation(
        model=model,
        update=update,
        kind="gradient",
        image_shape=(3, SIZE, SIZE),
        num_classes=CLASSES,
        normalization=((0.5,) * 3, (0.5,) * 3),
        batch_size=BATCH,
    )


def regularizer(inputs: Tensor, variables: tuple[Tensor, ...]) -> Tensor:
    return 1e-2 * total_variation(inputs)


def reference_step(obs: Observation, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Plain autograd, one restart at a time: what every GIA code base does."""
    model = copy.deepcopy(obs.model)  # a train-mode forward would update the running statistics
    params = [p for p in model.parameters() if p.requires_grad]
    target = obs.update_list()
    grads, losses, dists = [], [], []
    for r in range(x.shape[0]):
        leaf = x[r].detach().clone().requires_grad_(True)
        dummy = torch.autograd.grad(F.cross_entropy(model(leaf), LABELS), params, create_graph=True)
        dist = cosine_distance(dummy, target)
        loss = dist + regularizer(leaf, (leaf,))
        grads.append(torch.autograd.grad(loss, leaf)[0])
        losses.append(loss.detach())
        dists.append(dist.detach())
    return torch.stack(grads), torch.stack(losses), torch.stack(dists)


def start(restarts: int) -> Tensor:
    """Dummy pixels as the optimiser holds them: a leaf that requires grad."""
    return torch.randn(restarts, BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)).requires_grad_()


def assert_step_matches(
    obs: Observation, *, functional: bool, compile: bool, restarts: int, loop_restarts: bool = False
) -> None:
    x = start(restarts)
    ref_grad, ref_loss, ref_dist = reference_step(obs, x)
    matcher = GradientMatcher(
        obs,
        distance="cosine",
        render=lambda v: (v, LABELS),
        regularizer=regularizer,
        functional=functional,
        compile=compile,
        loop_restarts=loop_restarts,
    )
    for _ in range(2):  # the second call runs the cached (compiled) function
        (grad,), loss, dist = matcher.step([x])
        relative = float((grad - ref_grad).norm() / ref_grad.norm())
        assert relative < 1e-4, relative
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(dist, ref_dist, rtol=1e-4, atol=1e-6)
        assert grad.shape == x.shape and grad.grad_fn is None and loss.shape == (restarts,)
    assert x.grad is None  # the step never touches the caller's leaves


CASES = [("lenet-dlg", "eval"), ("convnet", "eval"), ("convnet", "train")]


@pytest.mark.parametrize("restarts", [1, 2])
@pytest.mark.parametrize(("name", "mode"), CASES)
@pytest.mark.parametrize("functional", [False, True], ids=["eager", "functional"])
def test_step_equals_plain_autograd(name: str, mode: str, restarts: int, functional: bool) -> None:
    assert_step_matches(observation(name, mode), functional=functional, compile=False, restarts=restarts)


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_the_functional_step_with_looped_restarts_equals_plain_autograd(name: str, mode: str) -> None:
    assert_step_matches(observation(name, mode), functional=True, compile=False, restarts=3, loop_restarts=True)


@pytest.mark.slow  # each case compiles a double-backward graph: 20 s to 2 min here
@pytest.mark.parametrize(
    ("name", "mode", "restarts"),
    [("lenet-dlg", "eval", 1), ("lenet-dlg", "eval", 2), ("convnet", "eval", 1), ("convnet", "eval", 2),
     ("convnet", "train", 2)],
)
def test_compiled_step_equals_plain_autograd(name: str, mode: str, restarts: int) -> None:
    assert_step_matches(observation(name, mode), functional=True, compile=True, restarts=restarts)
    if restarts > 1:  # the compiled chain called once per restart (attack.compile=auto where looping is faster)
        assert_step_matches(observation(name, mode), functional=True, compile=True, restarts=restarts,
                            loop_restarts=True)


def test_the_regularizer_sees_every_variable() -> None:
    # Prepare: a second variable that only the regulariser uses (as GradInversion's consensus)
    obs = observation("lenet-dlg", "eval")
    x = start(2)
    anchor = torch.zeros_like(x)

    def pull(inputs: Tensor, variables: tuple[Tensor, ...]) -> Tensor:
        return ((variables[0] - variables[1]) ** 2).sum()

    plain = GradientMatcher(obs, distance="cosine", render=lambda v, *_: (v, LABELS))
    pulled = GradientMatcher(obs, distance="cosine", render=lambda v, *_: (v, LABELS), regularizer=pull)
    # Execute
    (g_plain,), _, d_plain = plain.step([x])
    (g_x, g_anchor), loss, dist = pulled.step([x, anchor])
    # Assert: the pull adds 2·(x − anchor) to the pixels' gradient and nothing to the distance
    torch.testing.assert_close(g_x, g_plain + 2 * x.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_anchor, -2 * x.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist, d_plain)
    torch.testing.assert_close(loss, dist + (x.detach() ** 2).flatten(1).sum(1))


def test_whole_update_distances_equal_their_per_tensor_sums_in_float64() -> None:
    g = torch.Generator().manual_seed(3)
    shapes = [(6, 3, 5, 5), (6,), (10, 24), (10,)]
    dummy = [torch.randn(s, generator=g) for s in shapes]
    target = [torch.randn(s, generator=g) * 0.01 for s in shapes]
    d64, t64 = [d.double() for d in dummy], [t.double() for t in target]
    dot = sum((d * t).sum() for d, t in zip(d64, t64, strict=True))
    norms = math.sqrt(sum((d * d).sum() for d in d64)) * math.sqrt(sum((t * t).sum() for t in t64))
    assert float(cosine_distance(dummy, target)) == pytest.approx(float(1 - dot / norms), abs=1e-6)
    assert float(build_distance("cosine", target)(dummy, target)) == pytest.approx(float(1 - dot / norms), abs=1e-6)
    l2 = sum(((d - t) ** 2).sum() for d, t in zip(d64, t64, strict=True))
    assert float(l2_distance(dummy, target)) == pytest.approx(float(l2), rel=1e-6)


def test_per_chain_distances_and_penalties_equal_one_chain_at_a_time() -> None:
    g = torch.Generator().manual_seed(3)
    dummy = [torch.randn(3, 4, 5, generator=g), torch.randn(3, 7, generator=g)]  # 3 chains of two tensors
    target = [torch.randn(4, 5, generator=g), torch.randn(7, generator=g)]
    chains = [[t[r] for t in dummy] for r in range(3)]
    for name, whole in (("cosine", cosine_distance), ("l2", l2_distance)):
        torch.testing.assert_close(restart_distance(name, dummy, target),
                                   torch.stack([whole(c, target) for c in chains]))
        own = [torch.stack([t + r for r in range(3)]) for t in target]  # each chain its own target
        torch.testing.assert_close(restart_distance(name, dummy, own),
                                   torch.stack([whole(c, [t[r] for t in own]) for r, c in enumerate(chains)]))
    x = torch.randn(3, 2, 3, 8, 8, generator=g)
    prior = ImagePrior(tv=0.3, norm=0.01)
    looped = torch.stack([prior(c) for c in x.unbind(0)])
    assert looped.shape == (3,) and float(looped.min()) > 0
    torch.testing.assert_close(chain_penalties(prior, x), looped)
    plain = []  # any other regulariser is called once per chain, with that chain's variables

    def regulariser(inputs: Tensor, variables: tuple[Tensor, ...]) -> Tensor:
        plain.append(variables)
        return prior(inputs)

    torch.testing.assert_close(chain_penalties(regulariser, x), looped)
    assert len(plain) == 3 and all(torch.equal(v[0], c) for v, c in zip(plain, x.unbind(0), strict=True))
    marks = [(torch.tensor(float(r)),) for r in range(3)]  # variables given per chain reach their own chain
    torch.testing.assert_close(chain_penalties(regulariser, x, marks), looped)
    assert [float(v[0]) for v in plain[3:]] == [0.0, 1.0, 2.0] and chain_penalties(None, x) is None


@pytest.mark.slow  # compiles two double-backward graphs: about a minute here
def test_compiled_steps_of_one_function_alternated_each_follow_plain_autograd() -> None:
    """Two compiled matchers share the compiled function's code (1 and 2 restarts: other shapes); their later
    calls check only the guards that tell the two graphs apart (`compilation.CompileClock`), alternated."""
    obs = observation("lenet-dlg", "eval")
    cases = []
    for restarts in (1, 2):
        x = start(restarts)
        matcher = GradientMatcher(obs, distance="cosine", render=lambda v: (v, LABELS), regularizer=regularizer,
                                  functional=True, compile=True)
        cases.append((x, reference_step(obs, x), matcher))
    for _ in range(3):
        for x, (ref_grad, ref_loss, ref_dist), matcher in cases:
            (grad,), loss, dist = matcher.step([x])
            assert grad.shape == x.shape
            assert float((grad - ref_grad).norm() / ref_grad.norm()) < 1e-4
            torch.testing.assert_close(dist, ref_dist, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
