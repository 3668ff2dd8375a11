"""Trap weights: the first linear layer's rows fire for few images, and an image alone in a row comes out exactly."""

import pytest
import torch

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.analytic import trap_layer, trap_matrix
from fedinvert.attacks.base import ServerContext
from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError, ObservationError
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation
from fedinvert.runner import run

NORM = ((0.5,), (0.25,))


def test_sixteen_fashion_mnist_images_mostly_recovered_exactly():
    # Prepare: the paper's setting at B = 16: an MLP with 1000 rows, public scale from the train split
    args = ["attack=trap_weights", "threat.server=malicious", "model=mlp", "model.hidden=1000",
            "dataset=fashion-mnist", "image_size=28", "batch_size=16", "seed=0", "device=cpu", "progress=false"]
    # Execute
    result = run(resolve_config(args), write=False)
    # Assert: measured 13 of 16 at ≥ 60 dB (seeds 1, 2: 13, 16; at rate 1 / B: 13, 11, 10); the rest are mixtures
    per_image = [p["psnr"] for p in result.metrics["per_image"]]
    assert sum(p >= 60.0 for p in per_image) >= 11
    extras = result.reconstruction.extras
    assert extras["rows"] == 1000 and extras["repeated"] >= 10 and 1.0 < extras["scale"] < 2.0


def test_rows_fire_for_the_requested_share_of_public_images():
    public = torch.rand(2000, 1, 8, 8)
    weight, scale = trap_matrix(public, 200, rate=0.05, seed=0)
    fired = (weight @ public.flatten(1).double().T > 0).double().mean()
    assert abs(float(fired) - 0.05) < 0.002
    assert scale > 1.0
    assert float((weight < 0).double().mean()) == pytest.approx(0.5, abs=0.01)  # half of every row negative


def _context(public: torch.Tensor, batch_size: int | None = 4) -> ServerContext:
    return ServerContext(image_shape=(1, 8, 8), num_classes=10, normalization=NORM, public=public,
                         batch_size=batch_size)


def test_architecture_is_unchanged_and_the_normalisation_is_folded_in():
    public = torch.rand(500, 1, 8, 8)
    victim = build_model("mlp", in_channels=1, num_classes=10, image_size=8, seed=0, hidden=64)
    attack = ATTACKS.build("trap_weights", device="cpu", rate=0.1)
    sent = attack.modify_model(victim, _context(public))
    assert {k: v.shape for k, v in sent.state_dict().items()} == {k: v.shape for k, v in victim.state_dict().items()}
    assert torch.equal(sent.state_dict()["layers.head.weight"], victim.state_dict()["layers.head.weight"])
    raw_weight, _ = trap_matrix(public, 64, rate=0.1, seed=0)
    x = torch.rand(3, 1, 8, 8)
    _, layer = trap_layer(sent, (1, 8, 8))
    response = layer(((x - 0.5) / 0.25).flatten(1))
    assert torch.allclose(response.double(), x.flatten(1).double() @ raw_weight.T, atol=1e-4)
    assert attack.target_rate(_context(public, 20)) == 0.1  # an explicit rate wins
    default = ATTACKS.build("trap_weights", device="cpu")
    assert default.target_rate(_context(public, 40)) == 4 / 40 and default.target_rate(_context(public, None)) == 0.05


def test_an_image_alone_in_its_rows_comes_out_exactly_and_mixtures_are_ranked_after_it():
    public = torch.rand(1000, 1, 8, 8)
    victim = build_model("mlp", in_channels=1, num_classes=10, image_size=8, seed=0, hidden=300)
    attack = ATTACKS.build("trap_weights", device="cpu", rate=0.02)
    model = attack.modify_model(victim, _context(public, 1))
    image = torch.rand(1, 1, 8, 8)
    update = FedSGDClient(mode="eval").update(model, (image - 0.5) / 0.25, torch.tensor([3]))
    obs = Observation(model=model, update=update, kind="gradient", image_shape=(1, 8, 8), num_classes=10,
                      normalization=NORM, batch_size=1)
    rec = attack.reconstruct(obs)
    assert rec.extras["groups"] == 1 and rec.extras["repeated"] == 1  # every active row holds the same image
    assert float((rec.images - image).abs().max()) < 1e-5


def test_a_convolutional_victim_is_refused():
    victim = build_model("convnet", in_channels=1, num_classes=10, image_size=8, seed=0)
    with pytest.raises(ConfigError, match="first layer is linear"):
        ATTACKS.build("trap_weights", device="cpu").modify_model(victim, _context(torch.rand(50, 1, 8, 8)))
    update = FedSGDClient().update(victim, torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    obs = Observation(model=victim, update=update, kind="gradient", image_shape=(1, 8, 8), num_classes=10,
                      normalization=NORM, batch_size=2)
    with pytest.raises(ObservationError, match="first layer is linear"):
        ATTACKS.build("trap_weights", device="cpu").reconstruct(obs)


def test_the_attack_needs_a_malicious_server():
    args = ["attack=trap_weights", "model=mlp", "dataset=synthetic", "image_size=8", "batch_size=2", "device=cpu",
            "progress=false"]
    with pytest.raises(ConfigError, match="threat.server=malicious"):
        run(resolve_config(args), write=False)


@pytest.mark.parametrize("kwargs", [{"rate": 0.0}, {"rate": 1.0}, {"group": 0.0}, {"tolerance": 1.0}])
def test_bad_keywords_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="attack\\."):
        ATTACKS.build("trap_weights", device="cpu", **kwargs)
