"""Device hygiene of the attack steps, checked on the CPU through the operations they dispatch.

A step that reads a tensor on the host or builds a tensor from Python data would wait for a GPU on every
iteration; a float64 tensor there runs at a fraction of float32's speed on most GPUs. So: the number of host
reads and of tensors from Python data made during a run must not grow with the number of steps (everything
that remains is set-up, the final log entry and the result), and no step makes a float64 tensor.
"""

from __future__ import annotations

import pytest
import torch

from device_probe import Probe
from fedinvert.attacks import ATTACKS
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation, channel_constant
from fedinvert.priors import FashionPrior, to_victim

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


@pytest.fixture(scope="module")
def obs() -> Observation:
    """Two images seen through a small ReLU ConvNet's FedSGD gradient (train mode, so BatchNorm is batch-wise)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, SIZE, SIZE, generator=gen)
    labels = torch.tensor([1, 4])
    model = build_model("convnet", in_channels=3, num_classes=10, image_size=SIZE, width=0.25, seed=0)
    update = FedSGDClient(mode="eval").update(model, (images - 0.5) / 0.5, labels)
    return Observation(model=model, update=update, kind="gradient", image_shape=(3, SIZE, SIZE), num_classes=10,
                       normalization=((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), batch_size=2)


@pytest.fixture(scope="module")
def prior() -> FashionPrior:
    return FashionPrior(random_init=True)


# (attack, keywords of a run whose step count is `steps`) — small, eager, never logging before the end
ATTACK_RUNS = {
    "inverting_gradients": lambda steps: {"iterations": steps, "restarts": 2},
    "gradinversion": lambda steps: {"iterations": steps, "restarts": 2, "group_start": 1, "group_every": 1},
    "gifd": lambda steps: {"steps_per_stage": steps, "restarts": 2},
    "gias": lambda steps: {"latent_steps": steps, "finetune_steps": steps, "restarts": 1},
    "ggl": lambda steps: {"optimizer": "adam", "iterations": steps, "restarts": 2},
    # L-BFGS reads the loss on the host in every step by design (torch.optim, left out); DLG's own code may not
    "dlg": lambda steps: {"iterations": steps, "restarts": 1, "max_eval": 3},
}
NEEDS_PRIOR = {"gifd", "gias", "ggl"}


def probed_run(name: str, obs: Observation, prior: FashionPrior, steps: int) -> Probe:
    kwargs = {**ATTACK_RUNS[name](steps), "compile": False, "device": "cpu", "log_every": 10_000}
    if name in NEEDS_PRIOR:
        kwargs["prior"] = prior
    attack = ATTACKS.build(name, **kwargs)
    with Probe() as probe:
        rec = attack.reconstruct(obs, rng=torch.Generator().manual_seed(0))
    assert torch.isfinite(rec.images).all()
    return probe


@pytest.mark.parametrize("name", sorted(ATTACK_RUNS))
def test_no_host_sync_and_no_float64_per_step(name, obs, prior):
    # Prepare / Execute: the same attack with 2 and with 5 steps (per stage or phase).
    short = probed_run(name, obs, prior, 2)
    long = probed_run(name, obs, prior, 5)
    # Assert: the extra steps added no host read and no tensor from Python data, at any line (a cached
    # constant may be built in the first run only, hence the one-sided comparison).
    assert not long.host_reads - short.host_reads, long.host_reads - short.host_reads
    assert not long.from_python - short.from_python, long.from_python - short.from_python
    assert sum(long.host_reads.values()) > 0  # the final log entry and the result are read
    assert not long.float64_on("cpu"), long.float64_on("cpu")


def test_the_probe_sees_a_per_step_host_read(obs):
    # the test above can fail: a step that reads its distance every time is caught
    from fedinvert.attacks.base import optimize

    def step(variables):
        x = variables[0]
        loss = (x**2).sum(dim=(1, 2))
        float(loss.detach().min())  # a host read inside the step
        return (2 * x,), loss, loss

    counts = []
    for steps in (2, 5):
        with Probe() as probe:
            optimize(step, [torch.ones(2, 3, 4)], iterations=steps, lr=0.1, log_every=10_000)
        counts.append(sum(probe.host_reads.values()))
    assert counts[1] - counts[0] == 3


def test_normalisation_constants_are_built_once_per_device_and_dtype():
    a = channel_constant((0.5, 0.25), device="cpu")
    assert a is channel_constant([0.5, 0.25], device=torch.device("cpu"))
    assert a.shape == (1, 2, 1, 1) and a.dtype == torch.float32
    assert channel_constant((0.5, 0.25), dtype=torch.float64).dtype == torch.float64
    images = torch.rand(2, 1, 8, 8)
    norm = ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    to_victim(images, image_shape=(3, 8, 8), normalization=norm)
    with Probe() as probe:
        out = to_victim(images, image_shape=(3, 8, 8), normalization=norm)
    assert not probe.from_python and not probe.host_reads
    expected = (images.expand(-1, 3, -1, -1) - torch.tensor(norm[0]).view(1, 3, 1, 1)) / torch.tensor(norm[1]).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(out, expected)


def test_cached_constants_are_usable_by_autograd_even_when_made_in_inference_mode():
    with torch.inference_mode():
        channel_constant((0.123, 0.456), device="cpu")
    x = torch.rand(1, 2, 3, 3, requires_grad=True)
    y = (x / channel_constant((0.123, 0.456), device="cpu")).sum()
    y.backward()
    assert x.grad is not None
