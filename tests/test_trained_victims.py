"""Trained victims: ``model.pretrain_epochs`` trains the victim on the train split (cached), ``model.checkpoint``
loads its weights; both are checked before any work and recorded in run.json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import fedinvert.pretrain as pretrain
from fedinvert.cli import main
from fedinvert.config import resolve_config
from fedinvert.data.fashion_mnist import SYSTEM_DIR
from fedinvert.errors import CheckpointError, ConfigError
from fedinvert.models import build_model
from fedinvert.runner import build_scenario, run

pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: a second thread only costs time

needs_fashion = pytest.mark.skipif(
    not (SYSTEM_DIR / "train-labels-idx1-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)

# a ReLU LeNet-5 learns Fashion-MNIST fast enough for a test: 1 epoch on 3000 images takes about a second
FASHION = ["model=lenet5", "model.activation=relu", "dataset=fashion-mnist", "image_size=28", "channels=1",
           "batch_size=2", "device=cpu", "progress=false", "seed=3"]
TRAINED = [*FASHION, "model.pretrain_epochs=1", "model.pretrain_images=3000"]
PHOTOS = ["model=lenet5", "dataset=photos", "dataset.indices=[1]", "image_size=8", "batch_size=1", "device=cpu",
          "progress=false"]
ATTACK = ["attack=idlg", "attack.iterations=3", "attack.compile=false", "device=cpu", "progress=false",
          "metrics.st_lpips=false", "metrics.reid_distractors=2", "metrics.reference_draws=2"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEDINVERT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "victims"


def _state(scenario) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in scenario.observation.model.state_dict().items()}


def _lenet5_state(*, seed: int, num_classes: int = 10) -> dict[str, torch.Tensor]:
    model = build_model("lenet5", in_channels=3, num_classes=num_classes, image_size=8, seed=seed)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@needs_fashion
def test_pretraining_learns_the_task_keeps_the_batch_and_is_cached(cache, monkeypatch):
    plain = build_scenario(resolve_config([*FASHION, "attack=idlg"]))
    trained = build_scenario(resolve_config([*TRAINED, "attack=idlg"]))

    record = trained.info["victim_weights"]
    print(f"test accuracy after 1 epoch on 3000 images: {record['test_accuracy']:.3f}")
    assert record["test_accuracy"] > 0.5  # chance is 0.1
    assert record["pretrain"]["cache"] == "miss" and record["pretrain"]["images"] == 3000
    assert any(not torch.equal(v, _state(trained)[k]) for k, v in _state(plain).items())
    assert torch.equal(plain.private, trained.private) and torch.equal(plain.private_labels, trained.private_labels)
    assert "victim_weights" not in plain.info
    entry = Path(record["pretrain"]["cache_file"])
    assert entry.parent == cache and entry.is_file()
    stamp = entry.stat().st_mtime_ns

    def no_training(*_args, **_kwargs):
        raise AssertionError("trained again although the cache holds the victim")

    monkeypatch.setattr(pretrain, "_train", no_training)
    again = build_scenario(resolve_config([*TRAINED, "attack=idlg"]))
    assert again.info["victim_weights"]["pretrain"]["cache"] == "hit"
    assert again.info["victim_weights"]["test_accuracy"] == record["test_accuracy"]
    assert entry.stat().st_mtime_ns == stamp and list(cache.iterdir()) == [entry]
    assert all(torch.equal(v, _state(again)[k]) for k, v in _state(trained).items())


@needs_fashion
def test_a_corrupt_cache_entry_is_a_checkpoint_error_naming_it(cache):
    record = build_scenario(resolve_config([*TRAINED, "model.pretrain_images=64", "attack=idlg"]))
    entry = Path(record.info["victim_weights"]["pretrain"]["cache_file"])
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(entry)):
        build_scenario(resolve_config([*TRAINED, "model.pretrain_images=64", "attack=idlg"]))


@needs_fashion
def test_a_checkpoint_then_training_and_the_run_folder(tmp_path, cache):
    weights = tmp_path / "start.safetensors"
    model = build_model("lenet5", in_channels=1, num_classes=10, image_size=28, seed=9, activation="relu")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "run"
    run(resolve_config([*TRAINED, *ATTACK, "model.pretrain_images=256", f"model.checkpoint={weights}", f"out={out}"]))

    info = json.loads((out / "run.json").read_text())["scenario"]
    assert info["victim_weights"]["checkpoint"] == str(weights)
    assert info["victim_weights"]["pretrain"]["images"] == 256
    assert info["victim"] == {"name": "lenet5", "activation": "relu"}
    # a re-attack rebuilds the victim from the observation, which holds the trained weights
    again = tmp_path / "again"
    result = run(resolve_config([f"observation={out}", *ATTACK, f"out={again}"]))
    trained = load_file(info["victim_weights"]["pretrain"]["cache_file"])
    assert all(torch.equal(v, trained[k]) for k, v in result.scenario.observation.model.state_dict().items())
    # re-running the run's config.yaml finds the trained victim in the cache
    assert main(["attack", "--config", str(out / "config.yaml"), f"out={tmp_path / 'rerun'}"]) == 0
    rerun = json.loads((tmp_path / "rerun" / "run.json").read_text())["scenario"]
    assert rerun["victim_weights"]["pretrain"]["cache"] == "hit"


def test_a_checkpoint_round_trips(tmp_path):
    weights = tmp_path / "victim.safetensors"
    saved = _lenet5_state(seed=7)
    save_file(saved, str(weights))
    scenario = build_scenario(resolve_config([*PHOTOS, "attack=idlg", f"model.checkpoint={weights}"]))
    loaded = scenario.observation.model.state_dict()
    assert sorted(loaded) == sorted(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert any(not torch.equal(v, saved[k]) for k, v in _lenet5_state(seed=0).items())  # not the run's own init
    assert scenario.info["victim_weights"] == {"checkpoint": str(weights)}


def _bad_checkpoint(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.safetensors"
    if kind == "pickle":
        torch.save(_lenet5_state(seed=0), path)
    elif kind == "other-architecture":
        other = build_model("lenet-dlg", in_channels=3, num_classes=10, image_size=8)
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    elif kind == "wrong-shape":
        save_file(_lenet5_state(seed=0, num_classes=5), str(path))
    elif kind == "extra-key":
        save_file({**_lenet5_state(seed=0), "zzz.extra": torch.zeros(2)}, str(path))
    return path


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        ("pickle", "not a readable safetensors file"),
        ("other-architecture", "does not fit the victim 'lenet5': it has no tensor"),
        ("wrong-shape", "has shape .5"),
        ("extra-key", "unexpected tensor 'zzz.extra'"),
    ],
)
def test_a_bad_checkpoint_is_one_checkpoint_error_naming_the_file(tmp_path, kind, pattern):
    path = _bad_checkpoint(tmp_path, kind)
    with pytest.raises(CheckpointError, match=pattern) as err:
        build_scenario(resolve_config([*PHOTOS, "attack=idlg", f"model.checkpoint={path}"]))
    assert str(path) in str(err.value) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["model.pretrain_epochs=1"], r"model.pretrain_epochs: dataset 'photos' has no train split.*fashion-mnist"),
        (["dataset=lfw", "model.pretrain_epochs=2"], r"model.pretrain_epochs: dataset 'lfw'.*cifar10"),
        (["dataset=synthetic", "dataset.indices=null", "model.pretrain_epochs=1"], "dataset 'synthetic'"),
        (["model.pretrain_epochs=-1"], r"model.pretrain_epochs: must be ≥ 0, got -1"),
        (["model.pretrain_epochs=true"], "model.pretrain_epochs: must be an integer"),
        (["model.pretrain_images=0"], r"model.pretrain_images: must be ≥ 1"),
        (["model.checkpoint=/nonexistent/victim.safetensors"], "model.checkpoint: the file does not exist"),
        (["model.checkpoint=/"], "model.checkpoint: the file is a folder"),
        (["model.pretrained=1"], "model.pretrained: unknown key .*pretrain_epochs"),
    ],
)
def test_bad_training_keys_are_config_errors_before_any_work(monkeypatch, overrides, pattern):
    def no_work(*_args, **_kwargs):
        raise AssertionError("work started before the keys were checked")

    monkeypatch.setattr("fedinvert.runner.load_batch", no_work)
    with pytest.raises(ConfigError, match=pattern):
        build_scenario(resolve_config([*PHOTOS, "attack=idlg", *overrides]))


def test_the_cli_refuses_a_missing_checkpoint_in_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedinvert", "attack", *PHOTOS, "attack=idlg", "model.checkpoint=/nonexistent",
         f"out={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.checkpoint" in lines[0] and "/nonexistent" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
