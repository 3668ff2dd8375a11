"""The demo: GIFD and Inverting Gradients on the same observation of one real photo (the full run is `make demo`)."""

import csv

import pytest
import torch

from fedinvert import demo
from fedinvert.cli import main
from fedinvert.errors import ConfigError
from fedinvert.runner import build_scenario


def test_demo_runs_gifd_and_ig_on_one_scenario(tmp_path):
    gifd, ig, folder = demo.demo_configs(["seed=3"], out=str(tmp_path / "d"))
    assert gifd["attack"]["name"] == "gifd" and gifd["prior"]["name"] == "face-dcgan"
    assert ig["attack"]["name"] == "inverting_gradients"
    assert gifd["dataset"]["name"] == "photos" and gifd["image_size"] == 32 and gifd["seed"] == ig["seed"] == 3
    a, b = build_scenario(gifd), build_scenario(ig)
    assert torch.equal(a.private, b.private)
    assert a.observation.update.keys() == b.observation.update.keys()
    assert all(torch.equal(a.observation.update[k], b.observation.update[k]) for k in a.observation.update)
    assert folder == tmp_path / "d"


def test_demo_refuses_a_changed_attack_and_an_existing_folder(tmp_path):
    with pytest.raises(ConfigError, match="attacks are fixed"):
        demo.demo_configs(["attack=dlg"], out=str(tmp_path / "d"))
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="exists"):
        demo.demo_configs([], out=str(tmp_path / "d"))


def test_demo_writes_both_runs_and_the_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO_IG", [*demo.DEMO_IG, "attack.iterations=2", "attack.restarts=1"])
    out = tmp_path / "d"
    code = main(["demo", "attack.steps_per_stage=1", "attack.restarts=1", "image_size=32", f"out={out}"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("GIFD") and lines[1].startswith("Inverting Gradients") and "demo.png" in lines[2]
    assert (out / "gifd" / "run.json").is_file() and (out / "inverting_gradients" / "run.json").is_file()
    assert (out / "demo.png").is_file()
    assert lines[3] == f"report: {out / 'report.html'}"
    page = (out / "report.html").read_text()
    assert "<img" in page and "inverting_gradients" in page and "gifd" in page
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["folder"] for r in rows] == ["gifd", "inverting_gradients"] and all(r["status"] == "ok" for r in rows)
