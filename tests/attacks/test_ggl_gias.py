"""GGL (CMA-ES and Adam) and GIAS on the face DCGAN: valid images, budgets, determinism and errors."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.ggl import GGL
from fedinvert.attacks.gias import GIAS
from fedinvert.errors import ConfigError, MissingCapabilityError
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation
from fedinvert.priors import FaceDCGAN, to_victim

HAS_FACE_WHEEL = importlib.util.find_spec("gan_face_generate") is not None
pytestmark = [
    pytest.mark.skipif(not HAS_FACE_WHEEL, reason="gan-face-generate wheel not installed"),
    pytest.mark.usefixtures("one_thread"),
]
SIZE = 16




@pytest.fixture(scope="module")
def face() -> FaceDCGAN:
    return FaceDCGAN()


@pytest.fixture(scope="module")
def obs(face) -> Observation:
    """Two prior samples at 16×16 with labels 2 and 5, seen through a small ReLU ConvNet's FedSGD gradient."""
    with torch.no_grad():
        z = face.sample_latent(2, generator=torch.Generator().manual_seed(0))
        private = to_victim(face(z), image_shape=(3, SIZE, SIZE), normalization=((0, 0, 0), (1, 1, 1)))
    model = build_model("convnet", in_channels=3, num_classes=10, image_size=SIZE, width=0.25, seed=0)
    labels = torch.tensor([2, 5])
    update = FedSGDClient(mode="eval").update(model, (private.clamp(0, 1) - 0.5) / 0.5, labels)
    return Observation(model=model, update=update, kind="gradient", image_shape=(3, SIZE, SIZE), num_classes=10,
                       normalization=((0.5,) * 3, (0.5,) * 3), batch_size=2)


def build(name, prior, **kwargs):
    return ATTACKS.build(name, prior=prior, compile=False, device="cpu", log_every=2, **kwargs)


def valid(rec, obs) -> None:
    assert rec.images.shape == (2, *obs.image_shape)
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1
    assert rec.labels is not None and sorted(rec.labels.tolist()) == [2, 5]
    assert torch.isfinite(torch.tensor(rec.score))


def test_ggl_cma_es_returns_valid_images_and_is_deterministic(face, obs):
    attack = build("ggl", face, optimizer="cma", iterations=4, population=6, restarts=2)
    first = attack.reconstruct(obs, rng=torch.Generator().manual_seed(1))
    valid(first, obs)
    assert first.iterations == 4 * 6 * 2
    assert first.score == min(first.extras["restart_distances"])
    assert first.history[-1]["best_distance"] == pytest.approx(first.score)
    again = attack.reconstruct(obs, rng=torch.Generator().manual_seed(1))
    assert torch.equal(first.images, again.images) and first.score == again.score


def test_ggl_adam_returns_valid_images_and_improves(face, obs):
    rec = build("ggl", face, optimizer="adam", iterations=12, restarts=2, distance="cosine").reconstruct(
        obs, rng=torch.Generator().manual_seed(1)
    )
    valid(rec, obs)
    assert rec.iterations == 12 * 2
    assert rec.score <= rec.history[0]["distance"]


def test_gias_finetunes_copies_and_leaves_the_prior_unchanged(face, obs):
    weights = {n: p.clone() for n, p in face.state_dict().items()}
    attack = build("gias", face, latent_steps=6, finetune_steps=6, restarts=2)
    rec = attack.reconstruct(obs, rng=torch.Generator().manual_seed(1))
    valid(rec, obs)
    assert [s.name for s in rec.stages] == ["latent", "generator"]
    assert rec.iterations == (6 + 6) * 2
    # the fine-tuning starts at the latent result, so it can only lower the best distance
    assert rec.stages[1].distance <= rec.stages[0].distance
    assert rec.score == min(s.distance for s in rec.stages)
    assert all(torch.equal(weights[n], t) for n, t in face.state_dict().items())
    # every generator weight influences the face DCGAN's image, so all of them are tuned
    setup = attack.prepare(obs)
    start = face.initial_variables(face.sample_latent(2), None)
    assert len(attack.tunable_parameters(setup, start)) == len(list(face.parameters()))


def test_missing_prior_and_bad_values(face, monkeypatch):
    for cls in (GGL, GIAS):
        with pytest.raises(MissingCapabilityError, match="prior"):
            cls()
    for kwargs in ({"optimizer": "nevergrad"}, {"population": 1}, {"iterations": 0}, {"sigma": 0.0}, {"kld": -1.0}):
        with pytest.raises(ConfigError):
            GGL(prior=face, device="cpu", **kwargs)
    for kwargs in ({"latent_steps": 0}, {"finetune_lr": 0.0}, {"finetune_steps": -1}):
        with pytest.raises(ConfigError):
            GIAS(prior=face, device="cpu", **kwargs)
    monkeypatch.setitem(sys.modules, "cma", None)  # as if pycma were not installed
    with pytest.raises(ConfigError, match="fedinvert\\[gen\\]"):
        GGL(prior=face, device="cpu")
    GGL(prior=face, device="cpu", optimizer="adam")  # Adam needs no pycma
