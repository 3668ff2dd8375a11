"""The boundary: an observation that does not fit the model is refused; attacks get only what is granted."""

import pytest
import torch

from fedinvert import Capability, MissingCapabilityError, Observation, ObservationError
from fedinvert.attacks import ATTACKS, Attack
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model


def _obs(**changes):
    model = build_model("lenet-dlg", in_channels=3, num_classes=10, image_size=16, seed=0)
    x = torch.rand(2, 3, 16, 16)
    update = FedSGDClient().update(model, x, torch.tensor([1, 2]))
    kwargs = dict(model=model, update=update, kind="gradient", image_shape=(3, 16, 16), num_classes=10,
                  normalization=((0.5,) * 3, (0.5,) * 3), batch_size=2)
    kwargs.update(changes)
    return kwargs


def test_a_valid_observation_holds_no_private_images():
    obs = Observation(**_obs())
    assert set(obs.update) == set(obs.parameter_names)
    assert not any(f.name in ("images", "private", "inputs") for f in obs.__dataclass_fields__.values())


def test_wrong_shape_missing_key_extra_key_and_nan_are_refused():
    good = _obs()
    update = dict(good["update"])
    name = next(iter(update))
    with pytest.raises(ObservationError, match="shape"):
        Observation(**{**good, "update": {**update, name: torch.zeros(3)}})
    with pytest.raises(ObservationError, match="no gradient for"):
        Observation(**{**good, "update": {k: v for k, v in update.items() if k != name}})
    with pytest.raises(ObservationError, match="not a trainable parameter"):
        Observation(**{**good, "update": {**update, "ghost.weight": torch.zeros(1)}})
    with pytest.raises(ObservationError, match="NaN"):
        Observation(**{**good, "update": {**update, name: torch.full_like(update[name], float("nan"))}})
    with pytest.raises(ObservationError, match="normalization"):
        Observation(**{**good, "normalization": ((0.5,), (0.5,))})


class _NeedsMaliciousModel(Attack):
    requires = frozenset({Capability.MALICIOUS_MODEL})

    def reconstruct(self, obs, *, rng=None, progress=False):  # pragma: no cover - never reached
        raise AssertionError("must be refused before it runs")


def test_runner_refuses_an_attack_whose_capabilities_are_not_granted():
    obs = Observation(**_obs())
    with pytest.raises(MissingCapabilityError, match="malicious_model"):
        _NeedsMaliciousModel(device="cpu").check(obs, frozenset())
    _NeedsMaliciousModel(device="cpu").check(obs, frozenset({Capability.MALICIOUS_MODEL}))


def test_known_labels_need_the_threat_model_to_grant_them():
    attack = ATTACKS.build("inverting_gradients", labels="known", iterations=1, device="cpu", compile=False)
    with pytest.raises(MissingCapabilityError, match="threat.labels=known"):
        attack.reconstruct(Observation(**_obs()))
