"""threat.server: a model-modifying attack runs only under a malicious server, and what it sent is recorded."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fedinvert.attacks.base import Attack, ServerContext
from fedinvert.cli import main
from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError
from fedinvert.observation import Capability, Reconstruction
from fedinvert.runner import build_scenario

SMALL = ["model=convnet", "model.width=0.25", "dataset=synthetic", "image_size=16", "batch_size=2", "device=cpu",
         "progress=false", "seed=0"]


class ZeroHead(Attack):
    """A malicious test attack: zeroes the classifier's bias and records what context it was given."""

    requires = frozenset({Capability.MALICIOUS_MODEL})

    def modify_model(self, model, context):
        self.context = context
        with torch.no_grad():
            model.fc.bias.zero_()
        return model

    def reconstruct(self, obs, *, rng=None, progress=False):
        return Reconstruction(images=torch.zeros(2, *obs.image_shape), labels=None, score=0.0)


def test_default_server_is_honest():
    assert resolve_config(SMALL)["threat"]["server"] == "honest"


def test_bad_server_value_is_one_clear_line(capsys, one_error_line, tmp_path):
    assert main(["attack", *SMALL, "threat.server=evil", f"out={tmp_path / 'run'}"]) == 2
    assert one_error_line(capsys) == "error: threat.server: must be one of honest, malicious, got 'evil'"


def test_a_model_modifying_attack_is_refused_under_an_honest_server(capsys, one_error_line, tmp_path):
    # the CLI: refused by the config check before any work, exit 2, nothing written
    out = tmp_path / "run"
    assert main(["attack", "attack=imprint", *SMALL, f"out={out}"]) == 2
    line = one_error_line(capsys)
    assert "attack 'imprint' changes the model the server sends; it needs threat.server=malicious" in line
    assert not out.exists()
    # the Python API: build_scenario refuses it as well
    cfg = resolve_config(["attack=inverting_gradients", *SMALL])
    with pytest.raises(ConfigError, match="threat.server=malicious"):
        build_scenario(cfg, attack=ZeroHead(device="cpu"))


def test_the_modified_model_is_what_the_client_trains_on_and_is_granted():
    cfg = resolve_config(["attack=inverting_gradients", *SMALL, "threat.server=malicious"])
    attack = ZeroHead(device="cpu")
    scenario = build_scenario(cfg, attack=attack)
    assert isinstance(attack.context, ServerContext) and attack.context.public is not None
    assert attack.context.image_shape == (3, 16, 16)
    assert torch.equal(scenario.sent_model["fc.bias"], torch.zeros(10))
    assert torch.equal(scenario.observation.model.fc.bias.detach(), torch.zeros(10))
    assert Capability.MALICIOUS_MODEL in scenario.granted
    assert scenario.info["sent_model"]["file"] == "sent_model.safetensors"


def test_the_run_folder_records_the_sent_model(tmp_path):
    out = tmp_path / "run"
    assert main(["attack", "attack=imprint", "attack.bins=50", *SMALL, "threat.server=malicious", f"out={out}"]) == 0
    sent = load_file(out / "sent_model.safetensors")
    assert sent["imprint.encoder.weight"].shape == (50, 3 * 16 * 16)
    assert "victim.fc.weight" in sent
    info = json.loads((out / "run.json").read_text())
    assert info["threat"]["server"] == "malicious"
    assert info["scenario"]["sent_model"]["class"].endswith("ImprintedModel")
    assert info["scenario"]["sent_model"]["state"]["imprint.encoder.weight"] == [50, 768]
    assert any("ImprintBlock" in line for line in info["scenario"]["sent_model"]["architecture"])
