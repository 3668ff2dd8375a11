"""`fedinvert sweep`: a study expanded into runs with stable ids, stored as they finish, resumed after SIGKILL."""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedinvert.cli import main
from fedinvert.errors import ConfigError
from fedinvert.sweep import plan_sweep, run_sweep
from fedinvert.sweep.study import config_id, load_study, parse_study

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = """\
base:
  attack: {name: inverting_gradients, iterations: ITER, compile: false}
  model: lenet-dlg
  image_size: 16
  dataset: photos
  device: cpu
"""


def write_study(tmp_path: Path, axes: str, *, iterations: int = 10, extra: str = "", name: str = "s") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(BASE.replace("ITER", str(iterations)) + textwrap.dedent(axes) + textwrap.dedent(extra))
    return path


def read_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


# -- the study file -----------------------------------------------------------------------------------
def test_axes_cross_and_zip(tmp_path):
    study = load_study(write_study(tmp_path, """\
        axes:
          seed: [0, 1, 2]
        zip:
          - {attack.iterations: [5, 10], attack.lr: [0.1, 0.2]}
        """))
    runs = study.runs()
    assert len(runs) == 6
    assert {(r.values["attack.iterations"], r.values["attack.lr"]) for r in runs} == {(5, 0.1), (10, 0.2)}
    assert [r.values["seed"] for r in runs[:3]] == [0, 0, 1]  # the zipped group varies fastest (listed last)
    assert study.replicates == ["seed"]
    cfg = runs[0].config
    assert cfg["attack"]["iterations"] == 5 and cfg["attack"]["lr"] == 0.1 and cfg["image_size"] == 16


def test_mapping_and_preset_axis_values(tmp_path):
    # each attack with its own budget: a mapping value applies its leaves together, zipped with the name
    study = load_study(write_study(tmp_path, """\
        zip:
          - attack.name: [inverting_gradients, dlg]
            attack: [{iterations: 7, restarts: 2}, {iterations: 3}]
        """))
    ig, dlg = study.runs()
    assert (ig.config["attack"]["name"], ig.config["attack"]["iterations"], ig.config["attack"]["restarts"]) == (
        "inverting_gradients", 7, 2)
    assert (dlg.config["attack"]["name"], dlg.config["attack"]["iterations"]) == ("dlg", 3)
    # a preset axis sets a scenario; the base's keys still win over it
    runs = load_study(write_study(tmp_path, "axes: {preset: [id-fashion, ood-face-lfw]}\n", name="p")).runs()
    assert [r.config["prior"]["name"] for r in runs] == ["fashion", "face-dcgan"]
    assert all(r.config["dataset"]["name"] == "photos" and r.config["image_size"] == 16 for r in runs)
    with pytest.raises(ConfigError, match="preset names"):
        load_study(write_study(tmp_path, "axes: {preset: [3]}\n", name="q")).runs()


def test_ids_hash_the_resolved_config_only(tmp_path):
    a = load_study(write_study(tmp_path, "axes: {seed: [0, 1], batch_size: [1, 2]}\n", name="a")).runs()
    b = load_study(write_study(tmp_path, "axes: {batch_size: [2, 1], seed: [1, 0]}\n", name="b")).runs()
    assert {r.id for r in a} == {r.id for r in b} and len({r.id for r in a}) == 4
    cfg = dict(a[0].config)
    assert config_id({**cfg, "out": "elsewhere", "progress": True}) == a[0].id
    assert config_id({**cfg, "seed": 99}) != a[0].id
    # the same configuration reached twice is one run
    same = load_study(write_study(tmp_path, "axes: {attack.lr: [0.1, 0.1]}\n", name="c")).runs()
    assert len(same) == 1


@pytest.mark.parametrize(("text", "message"), [
    ("axes: {seed: []}\n", "non-empty list"),
    ("axes: {seed: 3}\n", "non-empty list"),
    ("axes: {out: [a, b]}\n", "cannot be an axis"),
    ("axes: {seed: [0]}\nzip: [{attack.lr: [0.1, 0.2], attack.iterations: [5]}]\n", "equal lengths"),
    ("axes: {seed: [0]}\ncompare: [{axis: seed, baseline: 7}]\n", "not a value of seed"),
    ("axes: {seed: [0]}\ncompare: [{axis: attack.lr, baseline: 1}]\n", "not an axis"),
    ("axes: {seed: [0]}\nreplicates: [batch_size]\n", "replicates"),
    ("axis: {seed: [0]}\n", "unknown key axis"),
    ("axes: {attack.lr: [0.1, -3]}\n", "run attack.lr=-3"),
    ("axes: {attack.nonsense: [1]}\n", "attack.nonsense"),
])
def test_bad_study_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_study(write_study(tmp_path, text)).runs()


def test_full_section_replaces_axes():
    data = {"base": {"attack": "dlg"}, "axes": {"seed": [0, 1]}, "full": {"axes": {"seed": list(range(16))}}}
    assert len(parse_study(data, source="x", name="x").axes["seed"]) == 2
    assert len(parse_study(data, source="x", name="x", full=True).axes["seed"]) == 16
    data["full"]["axes"] = {"seed": None, "batch_size": [1, 2]}  # null drops an axis
    assert list(parse_study(data, source="x", name="x", full=True).axes) == ["batch_size"]
    with pytest.raises(ConfigError, match="no full"):
        parse_study({"axes": {"seed": [0]}}, source="x", name="x", full=True)


def test_full_section_may_replace_compare():
    # a baseline that is a mapping changes with the budget: full: gives its own compare
    low, high = {"name": "dlg", "iterations": 5}, {"name": "dlg", "iterations": 500}
    data = {"axes": {"attack": [low, {"name": "idlg"}], "seed": [0, 1]},
            "compare": [{"axis": "attack", "baseline": low}],
            "full": {"axes": {"attack": [high, {"name": "idlg"}]}}}
    with pytest.raises(ConfigError, match="baseline.*not a value of attack"):
        parse_study(data, source="x", name="x", full=True)
    data["full"]["compare"] = [{"axis": "attack", "baseline": high}]
    assert parse_study(data, source="x", name="x", full=True).compare == [{"axis": "attack", "baseline": high}]
    assert parse_study(data, source="x", name="x").compare == [{"axis": "attack", "baseline": low}]


# -- running and resuming -----------------------------------------------------------------------------
def test_sweep_stores_every_run_and_repeats_none(tmp_path):
    study = write_study(tmp_path, """\
        axes:
          dataset.indices: [[0], [1], [100000]]
        """)
    out = tmp_path / "study"
    summary = run_sweep(plan_sweep(study, out=str(out)), progress=False)
    assert (summary.total, summary.finished, summary.failed) == (3, 2, 1)
    rows = read_rows(out)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert "out of range" in rows[2]["error"] and rows[2]["psnr"] == ""
    for row in rows[:2]:
        metrics = (out / row["folder"] / "metrics.json").read_text()
        assert f'"psnr": {row["psnr"]}' in metrics  # the row is the run folder's own number
        assert float(row["reference_psnr"]) > 5 and row["dataset.indices"] in ("[0]", "[1]")
    stamps = {r["id"]: (out / r["folder"] / "run.json").stat().st_mtime_ns for r in rows[:2]}
    again = run_sweep(plan_sweep(study, out=str(out)), progress=False)
    assert (again.already, again.finished, again.failed) == (2, 0, 1)  # the failure is tried again, nothing else
    assert stamps == {r["id"]: (out / r["folder"] / "run.json").stat().st_mtime_ns for r in read_rows(out)[:2]}


def test_a_folder_without_its_row_is_adopted_not_rerun(tmp_path):
    study = write_study(tmp_path, "axes: {seed: [0, 1]}\n")
    out = tmp_path / "study"
    run_sweep(plan_sweep(study, out=str(out)), progress=False)
    first = read_rows(out)[0]["id"]
    with sqlite3.connect(out / "results.sqlite") as db:  # as if killed between the rename and the row
        db.execute("delete from runs where id = ?", (first,))
    stamp = (out / "runs" / first / "run.json").stat().st_mtime_ns
    summary = run_sweep(plan_sweep(study, out=str(out)), progress=False)
    assert (summary.adopted, summary.finished, summary.already) == (1, 0, 2)
    assert (out / "runs" / first / "run.json").stat().st_mtime_ns == stamp
    assert [r["status"] for r in read_rows(out)] == ["ok", "ok"]


def test_sigkill_loses_no_finished_run_and_repeats_none(tmp_path):
    study = write_study(tmp_path, "axes: {seed: [0, 1, 2, 3, 4, 5]}\n", iterations=300)
    out = tmp_path / "study"
    command = [sys.executable, "-m", "fedinvert", "sweep", str(study), f"out={out}", "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "results.csv").is_file() and len(read_rows(out)) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_rows(out)
    assert 2 <= len(before) < 6, f"{len(before)} runs finished before the kill; the test needs a sweep in flight"
    stamps = {r["id"]: (out / r["folder"] / "run.json").stat().st_mtime_ns for r in before}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"({len(before)} already there" in done.stdout and f"{6 - len(before)} finished now" in done.stdout
    after = read_rows(out)
    assert len(after) == 6 and len({r["id"] for r in after}) == 6 and all(r["status"] == "ok" for r in after)
    assert stamps == {i: (out / "runs" / i / "run.json").stat().st_mtime_ns for i in stamps}
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(r["id"] for r in after)  # no leftovers


def test_process_pool_gives_the_same_numbers(tmp_path):
    study = write_study(tmp_path, "axes: {seed: [0, 1]}\n")
    one = run_sweep(plan_sweep(study, out=str(tmp_path / "one")), progress=False)
    two = run_sweep(plan_sweep(study, out=str(tmp_path / "two"), jobs=2, threads=1), progress=False)
    assert one.finished == two.finished == 2
    by_id = {r["id"]: r["psnr"] for r in read_rows(tmp_path / "one")}
    assert by_id == {r["id"]: r["psnr"] for r in read_rows(tmp_path / "two")}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (extra [ray])")
def test_ray_executor_on_a_local_cluster(tmp_path):
    study = write_study(tmp_path, "axes: {seed: [0, 1, 2]}\n")
    local = run_sweep(plan_sweep(study, out=str(tmp_path / "local")), progress=False)
    ray_run = run_sweep(plan_sweep(study, out=str(tmp_path / "ray"), executor="ray", jobs=2), progress=False)
    assert local.finished == ray_run.finished == 3
    rows = read_rows(tmp_path / "ray")
    assert {r["id"]: r["psnr"] for r in rows} == {r["id"]: r["psnr"] for r in read_rows(tmp_path / "local")}
    assert all((tmp_path / "ray" / r["folder"] / "reconstruction.png").is_file() for r in rows)


# -- the command line ---------------------------------------------------------------------------------
def test_cli_sweep_and_its_bad_inputs(tmp_path, capsys):
    study = write_study(tmp_path, "axes: {seed: [0, 1]}\n")
    assert main(["sweep", str(study), f"out={tmp_path / 'o'}", "--dry-run"]) == 0
    assert "2 runs over seed" in capsys.readouterr().out and not (tmp_path / "o").exists()
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    cases = [
        ([str(tmp_path / "missing.yaml"), f"out={tmp_path / 'o'}"], "does not exist"),
        ([str(study)], "out=DIR"),
        ([str(study), f"out={tmp_path / 'o'}", "--jobs", "0"], "--jobs"),
        ([str(study), f"out={tmp_path / 'o'}", "--executor", "slurm"], "unknown executor"),
        ([str(study), f"out={tmp_path / 'o'}", "--address", "x:1"], "--executor ray"),
        ([str(study), f"out={user}"], "not a study folder"),
        ([str(study), f"out={user / 'notes.txt'}"], "is a file"),
        ([str(study), f"out={tmp_path / 'o'}", "seed"], "not key=value"),
        ([str(study), f"out={tmp_path / 'o'}", "overwrite=true"], "sets it for every run"),
        ([str(study), f"out={tmp_path / 'o'}", "attack.lr=-1"], "attack.lr"),
    ]
    for args, message in cases:
        assert main(["sweep", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args, err)
    assert not (tmp_path / "o").exists() and (user / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(user)) == ["notes.txt"]


def test_batched_replicates_give_the_unbatched_numbers(tmp_path, monkeypatch):
    import json

    from fedinvert.attacks.optimization.inverting_gradients import PixelAttack

    # batching here, whatever the probe would find on this machine (tests/attacks/test_batched.py tests it)
    monkeypatch.setattr(PixelAttack, "batch_timing",
                        lambda self, obs: {"batched_step_seconds": 1.0, "separate_steps_seconds": 2.0})
    study = write_study(tmp_path, "axes: {seed: [0, 1, 2]}\n", iterations=30)
    one = run_sweep(plan_sweep(study, out=str(tmp_path / "one")), progress=False)
    batched = run_sweep(plan_sweep(study, out=str(tmp_path / "b"), batch=4), progress=False)
    assert one.finished == batched.finished == 3
    alone = {r["id"]: float(r["psnr"]) for r in read_rows(tmp_path / "one")}
    rows = read_rows(tmp_path / "b")
    assert {r["id"] for r in rows} == set(alone)  # the same runs, the same ids
    for row in rows:
        assert float(row["psnr"]) == pytest.approx(alone[row["id"]], abs=0.05)
        run = json.loads((tmp_path / "b" / row["folder"] / "run.json").read_text())
        assert run["attack_details"]["batched"]["runs"] == 3


def test_group_tasks_and_the_batch_flag(tmp_path, capsys):
    from fedinvert.sweep.executors import Task, group_tasks

    def task(i, seed, lr=0.1):
        return Task(str(i), {"seed": seed, "out": f"r{i}", "attack": {"name": "x", "lr": lr}}, [])

    tasks = [task(0, 0), task(1, 1), task(2, 0, lr=0.2), task(3, 2), task(4, 3), task(5, 1, lr=0.2)]
    assert [[t.id for t in g] for g in group_tasks(tasks, 3)] == [["0", "1", "3"], ["2", "5"], ["4"]]
    assert [[t.id for t in g] for g in group_tasks(tasks, 1)] == [[str(i)] for i in range(6)]
    indexed = [Task(str(i), {"seed": 0, "dataset": {"name": "photos", "indices": [i]}}, []) for i in range(3)]
    assert len(group_tasks(indexed, 4)) == 3  # they differ in dataset.indices, not in their seed
    assert [[t.id for t in g] for g in group_tasks(indexed, 4, ("dataset.indices",))] == [["0", "1", "2"]]
    study = write_study(tmp_path, "axes: {seed: [0, 1]}\n")
    with pytest.raises(ConfigError, match="--batch must be a whole number"):
        plan_sweep(study, out=str(tmp_path / "x"), batch=0)
    with pytest.raises(ConfigError, match="needs --executor local"):
        plan_sweep(study, out=str(tmp_path / "x"), batch=2, executor="ray")
    assert main(["sweep", str(study), f"out={tmp_path / 'x'}", "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
