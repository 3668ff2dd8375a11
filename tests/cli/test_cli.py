"""The command line: the run folder, re-runs, and one clear line with exit code 2 for bad input."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fedinvert.cli import main

SMALL = ["model=lenet-dlg", "dataset=photos", "dataset.indices=[1]", "image_size=16", "batch_size=1",
         "attack=idlg", "attack.iterations=5", "attack.compile=false", "device=cpu", "progress=false", "seed=0"]


def test_attack_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["attack", *SMALL, f"out={out}"]) == 0
    summary = capsys.readouterr().out
    assert "PSNR" in summary and str(out) in summary
    for name in ("config.yaml", "run.json", "metrics.json", "reconstruction.png", "tensors.safetensors",
                 "observation.safetensors", "loss.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "ssim", "mse", "label_accuracy", "seconds", "iterations", "per_image"):
        assert key in metrics
    assert metrics["iterations"] >= 5
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["attack"]["name"] == "idlg" and config["attack"]["iterations"] == 5
    assert "max_eval" in config["attack"]  # fully resolved, defaults included
    tensors = load_file(str(out / "tensors.safetensors"))
    assert set(tensors) >= {"reconstruction", "private", "labels"}
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["threat"]["labels"] == "inferred" and run_info["interrupted"] is False
    assert not list(tmp_path.glob(".*tmp*"))


def test_rerun_from_config_and_reattack_an_observation(tmp_path, capsys):
    first = tmp_path / "a"
    assert main(["attack", *SMALL, f"out={first}"]) == 0
    again = tmp_path / "b"
    assert main(["attack", "--config", str(first / "config.yaml"), f"out={again}"]) == 0
    a = load_file(str(first / "tensors.safetensors"))
    b = load_file(str(again / "tensors.safetensors"))
    assert torch.equal(a["reconstruction"], b["reconstruction"])
    third = tmp_path / "c"
    assert main(["attack", f"observation={first}", "attack=idlg", "attack.iterations=5", "attack.compile=false",
                 "device=cpu", "progress=false", f"out={third}"]) == 0
    c = json.loads((third / "metrics.json").read_text())
    assert c["psnr"] == pytest.approx(json.loads((first / "metrics.json").read_text())["psnr"], abs=1e-4)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["attack=nope"], "unknown attack 'nope'"),
        (["model=lenet-9"], "unknown model 'lenet-9'"),
        (["dataset=imagenet"], "unknown dataset 'imagenet'"),
        (["attack.bogus=1"], "attack.bogus"),
        (["attack.iterations=many"], "attack.iterations"),
        (["frobnicate=3"], "frobnicate"),
        (["threat.labels=maybe"], "threat.labels"),
        (["image_size=4"], "image_size"),
        (["dataset.indices=[999]"], "999"),
        (["dataset=fashion-mnist", "dataset.root=/nonexistent/fm", "image_size=28"], "dataset-fashion-mnist"),
        (["defense=[magic]"], "magic"),
        (["observation=/nonexistent/obs.safetensors"], "does not exist"),
        (["notakeyvalue"], "key=value"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, args, needle, one_error_line):
    out = tmp_path / "run"
    assert main(["attack", *SMALL, f"out={out}", *args]) == 2
    assert needle in one_error_line(capsys)
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_existing_output_folder_is_refused_unless_overwrite(tmp_path, capsys, one_error_line):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["attack", *SMALL, f"out={out}"]) == 2
    assert "overwrite=true" in one_error_line(capsys)
    assert (out / "keep.txt").read_text() == "mine"
    # overwrite=true replaces only a run folder: this one is the user's
    assert main(["attack", *SMALL, f"out={out}", "overwrite=true"]) == 2
    assert "not a fedinvert run folder" in one_error_line(capsys)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert main(["attack", *SMALL, f"out={out}"]) == 0  # an empty folder is used
    assert main(["attack", *SMALL, f"out={out}", "overwrite=true"]) == 0  # a run folder is replaced
    assert (out / "metrics.json").is_file()


def test_corrupt_observation_file_is_refused(tmp_path, capsys, one_error_line):
    bad = tmp_path / "observation.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    assert main(["attack", "attack=idlg", "device=cpu", f"observation={bad}", f"out={tmp_path / 'r'}"]) == 2
    assert "not a fedinvert observation" in one_error_line(capsys)


def test_list_prints_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("attacks", "models", "datasets", "metrics", "priors"):
        assert f"{kind}:" in out
    assert "inverting_gradients" in out and "lenet-dlg" in out
    assert main(["list", "nothing"]) == 2


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedinvert", "list", "attacks"], capture_output=True, text=True)
    assert proc.returncode == 0 and "idlg" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "fedinvert", "attack", "attack=nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
