"""A victim given as ``package.module:function``: the user's own nn.Module through the registry."""

from __future__ import annotations

import textwrap

import pytest
import torch

from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError
from fedinvert.models import build_model, model_options


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_victims.py").write_text(textwrap.dedent("""
        from torch import nn

        def tiny(in_channels, num_classes, hidden: int = 16):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 8 * 8, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

        def shapeless():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

        NOT_A_FACTORY = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_victims"


def test_entry_point_builds_seeded_with_its_options(user_module):
    a = build_model(f"{user_module}:tiny", in_channels=1, num_classes=4, image_size=8, seed=0, hidden=5)
    b = build_model(f"{user_module}:tiny", in_channels=1, num_classes=4, image_size=8, seed=0, hidden=5)

    assert a(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    assert a[1].out_features == 5
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert model_options(f"{user_module}:tiny") == ["hidden"]
    # a factory that takes no shape keywords is called without them
    assert build_model(f"{user_module}:shapeless", in_channels=1, num_classes=3, image_size=8).training


def test_entry_point_in_a_config(user_module):
    cfg = resolve_config([f"model={user_module}:tiny", "model.hidden=8", "dataset=synthetic", "image_size=8"])

    assert cfg["model"] == {"name": f"{user_module}:tiny", "hidden": 8}


@pytest.mark.parametrize("name, message", [
    ("my_victims:nope", "has no attribute 'nope'"),
    ("my_victims:NOT_A_FACTORY", "is not callable"),
    ("no_such_module_here:build", "cannot import no_such_module_here"),
])
def test_bad_entry_points_are_config_errors(user_module, name, message):
    with pytest.raises(ConfigError, match=message):
        build_model(name, in_channels=1, num_classes=3, image_size=8)


def test_an_unknown_option_of_an_entry_point_is_refused(user_module):
    with pytest.raises(ConfigError, match="model.width: unknown key"):
        resolve_config([f"model={user_module}:tiny", "model.width=2", "dataset=synthetic"])
