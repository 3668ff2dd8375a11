"""Re-attacking a saved observation: its file checked field by field, the keys it fixes refused, its labels used
only when the threat model grants them."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import fedinvert.runner as runner
from fedinvert import memory
from fedinvert.cli import main
from fedinvert.config import resolve_config

SMALL = ["model=lenet5", "dataset=photos", "dataset.indices=[1]", "image_size=8", "batch_size=1", "attack=idlg",
         "attack.iterations=3", "attack.compile=false", "device=cpu", "progress=false", "seed=0",
         "metrics.st_lpips=false", "metrics.reid_distractors=2", "metrics.reference_draws=2"]
# what a re-attack sets: only the attacker's side
ATTACK = ["attack=idlg", "attack.iterations=3", "attack.compile=false", "device=cpu", "progress=false",
          "metrics.st_lpips=false", "metrics.reid_distractors=2", "metrics.reference_draws=2"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A run folder whose observation holds the labels (saved under threat.labels=known)."""
    out = tmp_path_factory.mktemp("saved") / "run"
    runner.run(resolve_config([*SMALL, "threat.labels=known", f"out={out}"]))
    return out


@pytest.fixture(scope="module")
def saved_without_labels(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("saved") / "run"
    runner.run(resolve_config([*SMALL, f"out={out}"]))
    return out


def _read(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = folder / "observation.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["fedinvert"])
    return load_file(str(path)), meta


def _altered(source: Path, target: Path, *, meta=None, tensors=None, raw_meta=None, private=True) -> Path:
    """A copy of ``source``'s observation with ``meta(dict)`` / ``tensors(dict)`` applied to it."""
    target.mkdir(parents=True)
    stored, data = _read(source)
    if meta is not None:
        meta(data)
    if tensors is not None:
        tensors(stored)
    text = raw_meta if raw_meta is not None else json.dumps(data)
    save_file(stored, str(target / "observation.safetensors"), metadata={"fedinvert": text} if text else None)
    if private:
        shutil.copy(source / "tensors.safetensors", target / "tensors.safetensors")
    return target / "observation.safetensors"


def _set(key, value):
    def change(data):
        data[key] = value

    return change


def _first(prefix: str):
    def pick(stored):
        return next(name for name, t in stored.items() if name.startswith(prefix) and t.is_floating_point())

    return pick


# -- the metadata --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.pop("kind"), "metadata field kind: field required"),
        (_set("num_classes", "10"), "metadata field num_classes: input should be a valid integer, got '10'"),
        (_set("num_classes", 1), "metadata field num_classes: input should be greater than or equal to 2, got 1"),
        (_set("batch_size", -1), "metadata field batch_size: input should be greater than 0, got -1"),
        (_set("batch_size", 1.0), "metadata field batch_size: input should be a valid integer, got 1.0"),
        (_set("kind", "gradients"), "metadata field kind: input should be 'gradient' or 'weight_delta'"),
        (_set("image_shape", [3, 8]), "metadata field image_shape.2: field required"),
        (_set("normalization", [[0.5] * 3, [0.5, 0.0, 0.5]]), "metadata field normalization.1.1: input should be"),
        (_set("model_training", "yes"), "metadata field model_training: input should be a valid boolean"),
        (_set("model", {"width": 2}), "metadata field model.name: field required"),
        (_set("secret", 1), "metadata field secret: extra inputs are not permitted"),
        (_set("local_training", {"epochs": 0, "batch_size": 8, "lr": 0.1}), "metadata field local_training.epochs"),
    ],
)
def test_bad_metadata_is_one_line_naming_the_file_and_field(saved, tmp_path, capsys, change, needle, one_error_line):
    path = _altered(saved, tmp_path / "obs", meta=change)
    assert main(["attack", f"observation={path}", *ATTACK, f"out={tmp_path / 'r'}"]) == 2
    line = one_error_line(capsys)
    assert str(path) in line and needle in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("raw", "needle"), [("{not json", "metadata field (top level): invalid json"),
                                             ("", "no fedinvert metadata"), ("[1, 2]", "input should be an object")])
def test_metadata_that_is_not_an_object(saved, tmp_path, capsys, raw, needle, one_error_line):
    path = _altered(saved, tmp_path / "obs", raw_meta=raw)
    assert main(["attack", f"observation={path}", *ATTACK, f"out={tmp_path / 'r'}"]) == 2
    assert needle in one_error_line(capsys)


# -- the tensors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["model.", "update."])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_or_update_are_refused(saved, tmp_path, capsys, prefix, bad, one_error_line):
    stored, _ = _read(saved)
    name = _first(prefix)(stored)

    def poison(tensors):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = bad

    path = _altered(saved, tmp_path / "obs", tensors=poison)
    assert main(["attack", f"observation={path}", *ATTACK, f"out={tmp_path / 'r'}"]) == 2
    assert f"{path}: tensor '{name}' holds NaN or inf" in one_error_line(capsys)


def test_weights_of_another_shape_and_stray_tensors_are_refused(saved, tmp_path, capsys, one_error_line):
    stored, _ = _read(saved)
    name = _first("model.")(stored)
    path = _altered(saved, tmp_path / "a", tensors=lambda t: t.update({name: torch.zeros(3)}))
    assert main(["attack", f"observation={path}", *ATTACK, f"out={tmp_path / 'r'}"]) == 2
    assert "model weights do not match 'lenet5'" in one_error_line(capsys)
    path = _altered(saved, tmp_path / "b", tensors=lambda t: t.update({"private": torch.zeros(1, 3, 8, 8)}))
    assert main(["attack", f"observation={path}", *ATTACK, f"out={tmp_path / 'r'}"]) == 2
    assert "unexpected tensor 'private'" in one_error_line(capsys)


def test_labels_outside_the_label_space_are_refused(saved, tmp_path, capsys, one_error_line):
    path = _altered(saved, tmp_path / "obs", tensors=lambda t: t.update({"labels": torch.tensor([10])}))
    assert main(["attack", f"observation={path}", *ATTACK, "threat.labels=known", f"out={tmp_path / 'r'}"]) == 2
    assert f"{path}: labels must lie in [0, 10)" in one_error_line(capsys)


# -- the private batch beside it (evaluation only) -----------------------------------------------------------
def _with_private(saved: Path, folder: Path, content: bytes | dict) -> Path:
    path = _altered(saved, folder, private=False)
    if isinstance(content, bytes):
        (folder / "tensors.safetensors").write_bytes(content)
    else:
        save_file(content, str(folder / "tensors.safetensors"))
    return path


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x00garbage" * 20, "tensors.safetensors is not a fedinvert run tensors file"),
        ({"private": torch.rand(1, 3, 4, 4), "labels": torch.tensor([0])}, "'private' must be (B, 3, 8, 8)"),
        ({"private": torch.rand(2, 3, 8, 8), "labels": torch.tensor([0, 1])}, "2 private images for an observation"),
        ({"private": torch.full((1, 3, 8, 8), 2.0), "labels": torch.tensor([0])}, "finite images in [0, 1]"),
        ({"private": torch.rand(1, 3, 8, 8), "labels": torch.tensor([0.5])}, "'labels' must be 1 integers"),
        ({"reconstruction": torch.rand(1, 3, 8, 8)}, "holds no 'private' images"),
    ],
)
def test_a_bad_private_batch_beside_it_is_one_line(saved, tmp_path, capsys, content, needle, one_error_line):
    path = _with_private(saved, tmp_path / "obs", content)
    assert main(["attack", f"observation={path}", *ATTACK, f"out={tmp_path / 'r'}"]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "obs" / "tensors.safetensors") in line and needle in line


def test_without_a_private_batch_it_is_attacked_unscored(saved, tmp_path):
    path = _altered(saved, tmp_path / "obs", private=False)
    scenario = runner.build_scenario(resolve_config([f"observation={path}", *ATTACK]))
    assert scenario.private is None and scenario.private_labels is None


# -- what the config may still say ---------------------------------------------------------------------------
def test_keys_a_saved_observation_fixes_are_named(saved):
    cfg = resolve_config([f"observation={saved}", *ATTACK, "threat.labels=known"])
    assert runner.observation_conflicts(cfg) == []
    cfg["model"] = {"name": "convnet", "width": 2}
    cfg["threat"] = {**cfg["threat"], "defenses": "unknown", "batch_size": "unknown"}
    cfg["image_size"] = 16
    cfg["dataset"] = {**cfg["dataset"], "split": "train"}
    cfg["defense"] = {"clipping": {}}

    assert runner.observation_conflicts(cfg) == [
        "dataset.split", "defense.clipping", "image_size", "model.name", "model.width", "threat.batch_size",
        "threat.defenses",
    ]


def test_client_side_keys_are_refused_in_one_line(saved, tmp_path, capsys, one_error_line):
    args = ["attack", f"observation={saved}", *ATTACK, "model=convnet", "threat.defenses=unknown",
            f"out={tmp_path / 'r'}"]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "model.name, threat.defenses: cannot apply to a saved observation" in line
    assert not (tmp_path / "r").exists()


def test_saved_labels_are_used_only_when_granted(saved):
    stored, _ = _read(saved)
    granted = runner.build_scenario(resolve_config([f"observation={saved}", *ATTACK, "threat.labels=known"]))
    dropped = runner.build_scenario(resolve_config([f"observation={saved}", *ATTACK]))

    assert torch.equal(granted.observation.labels, stored["labels"]) and granted.info["saved_labels"] == "used"
    assert dropped.observation.labels is None and dropped.info["saved_labels"] == "dropped"
    assert torch.equal(dropped.private_labels, stored["labels"])  # evaluation still scores the label guess


def test_known_labels_need_saved_labels(saved_without_labels, tmp_path, capsys, one_error_line):
    args = ["attack", f"observation={saved_without_labels}", *ATTACK, "threat.labels=known", f"out={tmp_path / 'r'}"]
    assert main(args) == 2
    assert "threat.labels=known, but" in one_error_line(capsys)


def test_a_re_attack_records_the_labels_decision_and_keeps_the_victim(saved, tmp_path):
    out = tmp_path / "again"
    assert main(["attack", f"observation={saved}", *ATTACK, f"out={out}"]) == 0

    run_info = json.loads((out / "run.json").read_text())
    assert run_info["scenario"]["saved_labels"] == "dropped" and run_info["threat"]["labels"] == "inferred"
    tensors, meta = _read(out)
    assert "labels" not in tensors  # the new observation grants only what this run's threat model granted
    assert meta["model"]["name"] == "lenet5"  # the observation's victim, not the config's default
    assert runner.build_scenario(resolve_config([f"observation={out}", *ATTACK])).observation.model is not None


def test_a_victim_too_large_for_memory_is_refused_before_it_is_built(saved, tmp_path, capsys, monkeypatch, one_error_line):
    monkeypatch.setattr(memory, "available_memory", lambda: 2**20)
    monkeypatch.setattr(runner, "build_model", lambda *a, **k: pytest.fail("the victim was allocated"))
    path = _altered(saved, tmp_path / "obs", meta=_set("num_classes", 100000))
    assert main(["attack", f"observation={path}", *ATTACK, f"out={tmp_path / 'r'}"]) == 2
    assert "victim parameters × 4 copies), but this machine has 1.0 MiB available" in one_error_line(capsys)
