"""The ``normalization`` config key: auto / identity / {mean, std}, what the victim sees, and its errors."""

from __future__ import annotations

import copy

import pytest
import torch

from fedinvert.cli import main
from fedinvert.config import resolve_config
from fedinvert.data import resolve_normalization
from fedinvert.errors import ConfigError
from fedinvert.fl import FedSGDClient
from fedinvert.runner import build_scenario, run

BASE = ["model=convnet", "model.width=0.25", "dataset=synthetic", "image_size=16", "batch_size=2", "seed=3"]


def victim_update(scenario, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The FedSGD update of the scenario's victim (at its initial weights) on ``inputs``."""
    model = copy.deepcopy(scenario.observation.model)
    return FedSGDClient(mode="eval").update(model, inputs, scenario.private_labels)


def assert_same_update(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7, msg=name)


def test_identity_gives_the_victim_the_unnormalised_images():
    scenario = build_scenario(resolve_config([*BASE, "normalization=identity"]))
    obs = scenario.observation
    assert obs.normalization == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    private = scenario.private
    assert float(private.min()) >= 0 and float(private.max()) <= 1
    # the observed update is the victim's gradient on the [0, 1] images themselves ...
    assert_same_update(obs.update, victim_update(scenario, private))
    # ... and not on the default 0.5 / 0.5 normalisation of them (which the same seed gives under auto)
    auto = build_scenario(resolve_config(BASE))
    assert auto.observation.normalization == ((0.5,) * 3, (0.5,) * 3)
    assert torch.equal(auto.private, private)
    assert_same_update(auto.observation.update, victim_update(auto, (private - 0.5) / 0.5))
    differs = [not torch.allclose(obs.update[n], auto.observation.update[n]) for n in obs.update]
    assert any(differs)


def test_a_mapping_sets_mean_and_std_per_channel_and_is_recorded():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    cfg = resolve_config([*BASE, f"normalization={{mean: {mean}, std: {std}}}", "attack=dlg", "attack.iterations=1",
                          "progress=false", "device=cpu", "metrics.st_lpips=false"])
    result = run(cfg, write=False)
    obs = result.scenario.observation
    assert obs.normalization == (tuple(mean), tuple(std))
    inputs = (result.scenario.private - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert_same_update(obs.update, victim_update(result.scenario, inputs))
    # config.yaml records the values, so a re-run normalises alike; auto is resolved to the data set's default
    assert result.config["normalization"] == {"mean": mean, "std": std}
    assert result.scenario.info["normalization"] == {"mean": mean, "std": std}
    auto = build_scenario(resolve_config(BASE))
    assert auto.info["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}


def test_single_entries_are_repeated_and_auto_is_the_data_set_default():
    assert resolve_normalization({"mean": [0.2], "std": 0.4}, "synthetic", 3) == ((0.2,) * 3, (0.4,) * 3)
    assert resolve_normalization("auto", "fashion-mnist", 1) == ((0.2860,), (0.3530,))
    assert resolve_normalization(None, "photos", 3) == ((0.5,) * 3, (0.5,) * 3)
    assert resolve_normalization("identity", "photos", 1) == ((0.0,), (1.0,))


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"mean": [0.5, 0.5], "std": [0.5, 0.5]}, "normalization.mean has 2 entries"),
        ({"mean": [0.5], "std": [0.2, 0.2, 0.2, 0.2]}, "normalization.std has 4 entries"),
        ({"mean": [0.5], "std": [0.0]}, "positive"),
        ({"mean": [0.5]}, "lacks std"),
        ({"mean": [0.5], "std": [0.5], "scale": 2}, "unknown key 'scale'"),
        ({"mean": ["a"], "std": [0.5]}, "finite numbers"),
        ("imagenet", "auto, identity"),
    ],
)
def test_bad_normalization_is_a_config_error(value, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve_normalization(value, "synthetic", 3)


def test_wrong_channel_count_stops_the_cli_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["attack", *BASE, "normalization={mean: [0.5, 0.5], std: [0.5, 0.5]}", "attack=dlg",
                 "attack.iterations=1", "progress=false", "device=cpu", f"out={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "normalization.mean" in err and "[0.5, 0.5]" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    # three entries for LFW's grey faces: the channel count is known once the data set is read
    code = main(["attack", *BASE, "dataset=lfw", "normalization={mean: [0.5, 0.5, 0.5], std: [0.5]}", "attack=dlg",
                 "attack.iterations=1", "progress=false", "device=cpu", f"out={out}"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith("error: ") and "normalization.mean has 3 entries" in err and "1 channel:" in err
    # a malformed value is refused before the data set is read at all
    with pytest.raises(ConfigError, match="normalization"):
        build_scenario(resolve_config([*BASE, "normalization=[0.5]", "dataset=folder", "dataset.root=/nonexistent"]))
