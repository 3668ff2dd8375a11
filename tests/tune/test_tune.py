"""`fedinvert tune`: Optuna trials through the sweep executors, scored by the gradient distance, resumable."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytest.importorskip("optuna")

import optuna  # noqa: E402

from fedinvert.attacks.objectives import GradientMatcher, total_variation  # noqa: E402
from fedinvert.cli import main  # noqa: E402
from fedinvert.config import resolve_config  # noqa: E402
from fedinvert.errors import ConfigError  # noqa: E402
from fedinvert.runner import build_scenario, run  # noqa: E402
from fedinvert.sweep import executors  # noqa: E402
from fedinvert.tune import STUDY_NAME, plan_tune, run_tune  # noqa: E402
from fedinvert.tune.outputs import TrialRow, select_best  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SCENARIO = ["attack=inverting_gradients", "attack.iterations=15", "attack.compile=false", "model=lenet-dlg",
            "image_size=16", "dataset=photos", "device=cpu"]


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{folder / 'tune.db'}")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny tune of four trials through the command line, and what it printed."""
    out = tmp_path_factory.mktemp("tune") / "t"
    code = main(["tune", *SCENARIO, "--trials", "4", "--threads", "1", "--no-progress", f"out={out}"])
    return out, code


def test_a_tiny_tune_writes_its_study_trials_and_best_preset(tuned, capsys):
    out, code = tuned
    assert code == 0
    assert {"tune.db", "tune.json", "trials.csv", "best.yaml", "default.yaml", "trials"} <= set(os.listdir(out))
    found = rows(out)
    assert [r["number"] for r in found] == ["0", "1", "2", "3"] and all(r["status"] == "complete" for r in found)
    assert [t.state for t in study(out).trials] == [optuna.trial.TrialState.COMPLETE] * 4
    # trial 0 is the configuration as given: its params are the attack's defaults, its distance a plain run's
    first = found[0]
    assert first["default"] == "yes" and (first["attack.lr"], first["attack.schedule"], first["attack.tv"],
                                          first["attack.restarts"]) == ("0.1", "cosine", "0.01", "1")
    plain = run(resolve_config([*SCENARIO, "progress=false"]), write=False)
    assert float(first["objective"]) == pytest.approx(plain.metrics["distance"], rel=1e-5)
    assert float(first["psnr"]) == pytest.approx(plain.metrics["psnr"], rel=1e-5)
    assert len({r["attack.lr"] for r in found}) == 4  # the sampler searched
    # each objective is the run's recorded gradient distance; PSNR and leakage are copied beside it
    for row in found:
        metrics = json.loads((out / row["folder"] / "metrics.json").read_text())
        assert float(row["objective"]) == metrics["distance"]
        assert float(row["psnr"]) == metrics["psnr"] and float(row["leakage_db"]) == metrics["leakage_db"]
        assert float(row["seconds"]) > 0
    # the best is the least objective, and best.yaml is its configuration as a loadable preset
    best = min(found, key=lambda r: float(r["objective"]))
    cfg = resolve_config([f"preset={out / 'best.yaml'}"])
    assert cfg["attack"]["lr"] == float(best["attack.lr"]) and cfg["attack"]["tv"] == float(best["attack.tv"])
    assert cfg["attack"]["restarts"] == int(best["attack.restarts"]) and cfg["attack"]["iterations"] == 15
    assert resolve_config([f"preset={out / 'default.yaml'}"]) == resolve_config(SCENARIO)
    # the summary names both, with the default's objective and PSNR beside the best's
    main(["tune", *SCENARIO, f"out={out}", "--trials", "4", "--no-progress"])  # resumed: nothing to run
    printed = capsys.readouterr().out
    assert "(4 already there, 0 now)" in printed
    assert f"default (trial 0): distance {float(first['objective']):.4g}" in printed
    assert f"best    (trial {best['number']}): distance {float(best['objective']):.4g}" in printed


def test_the_objective_is_the_data_term_not_the_regularised_loss(tuned):
    out, _ = tuned
    row = max(rows(out), key=lambda r: float(r["attack.tv"]))  # the trial whose TV weighs most
    folder = out / row["folder"]
    cfg = resolve_config([*SCENARIO, "progress=false"])
    scenario = build_scenario(cfg)
    tensors = load_file(str(folder / "tensors.safetensors"))
    obs = scenario.observation
    inputs = obs.normalize(tensors["reconstruction"])
    labels = tensors["reconstructed_labels"]
    matcher = GradientMatcher(obs, distance="cosine", render=lambda x: (x, labels))
    distance = matcher.distance(inputs, labels)
    regulariser = float(row["attack.tv"]) * float(total_variation(inputs))
    assert float(row["objective"]) == pytest.approx(distance, abs=1e-5)
    assert regulariser > 1e-4  # large enough that adding it would have been seen
    assert abs(float(row["objective"]) - (distance + regulariser)) > 1e-4


def test_selection_reads_the_objective_only():
    trials = [TrialRow(0, "complete", {}, 0.5, reported={"psnr": 30.0}),
              TrialRow(1, "complete", {}, 0.1, reported={"psnr": 5.0}),
              TrialRow(2, "failed", {}, None, reported={"psnr": 99.0}),
              TrialRow(3, "complete", {}, 0.1, reported={"psnr": 6.0})]
    best = select_best(trials)
    assert best is not None and best.number == 1  # least distance (lower number on a tie), whatever the PSNR


def test_resume_after_ctrl_c_and_a_killed_trial_adds_only_the_missing_ones(tmp_path, monkeypatch):
    out = tmp_path / "t"
    calls: list[str] = []
    real = executors.execute

    def counting(task, folder, threads=None):
        calls.append(task.id)
        if len(calls) == 3 and os.environ.get("FEDINVERT_TEST_CTRL_C", "1") == "1":
            return executors.Outcome(task.id, "interrupted")  # what a run stopped by Ctrl-C hands back
        return real(task, folder, threads)

    monkeypatch.setattr(executors, "execute", counting)
    first = run_tune(plan_tune([*SCENARIO, f"out={out}"], trials=5, threads=1), progress=False)
    assert first.interrupted and first.finished == 2 and calls == ["0000", "0001", "0002"]
    assert [r["status"] for r in rows(out)] == ["complete", "complete", "interrupted"]
    assert not (out / "trials" / "0002").exists()  # an unfinished trial leaves no run folder
    # as if the next start were killed while trial 3 ran: asked, params drawn, never told
    s = study(out)
    waiting = [t for t in s.trials if t.state == optuna.trial.TrialState.WAITING]
    assert [t.user_attrs["retry_of"] for t in waiting] == [2]
    killed = s.ask()
    assert killed.user_attrs.get("retry_of") == 2
    plan = plan_tune([*SCENARIO, f"out={out}"], trials=5, threads=1)
    killed_params = plan.space.suggest(killed)  # the interrupted trial 2's, fixed by its retry
    stamps = {n: (out / "trials" / n / "run.json").stat().st_mtime_ns for n in ("0000", "0001")}
    calls.clear()
    monkeypatch.setenv("FEDINVERT_TEST_CTRL_C", "0")
    again = run_tune(plan, progress=False)
    assert not again.interrupted and again.recovered == 1 and again.before == 2 and again.finished == 3
    assert len(calls) == 3  # 5 wanted, 2 finished: only the missing three ran
    found = rows(out)
    complete = [r for r in found if r["status"] == "complete"]
    assert len(complete) == 5 and [r["status"] for r in found].count("interrupted") == 2
    retry = next(r for r in complete if r["retry_of"] == str(killed.number))
    assert float(retry["attack.lr"]) == pytest.approx(killed_params["attack.lr"])
    assert stamps == {n: (out / "trials" / n / "run.json").stat().st_mtime_ns for n in stamps}
    assert sorted(os.listdir(out / "trials")) == sorted(r["folder"].split("/")[1] for r in complete)


def test_sigkill_loses_no_finished_trial_and_counts_none_twice(tmp_path):
    out = tmp_path / "t"
    scenario = [s.replace("attack.iterations=15", "attack.iterations=150") for s in SCENARIO]
    command = [sys.executable, "-m", "fedinvert", "tune", *scenario, f"out={out}", "--trials", "4", "--threads", "1",
               "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "trials.csv").is_file() and sum(r["status"] == "complete" for r in rows(out)) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.2)  # into the next trial
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [r for r in rows(out) if r["status"] == "complete"]
    assert 2 <= len(before) < 4, f"{len(before)} trials finished before the kill; the test needs a tune in flight"
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    after = rows(out)
    complete = [r for r in after if r["status"] == "complete"]
    assert len(complete) == 4 and {r["number"] for r in before} <= {r["number"] for r in complete}
    assert f"({len(before)} already there, {4 - len(before)} now" in done.stdout or "adopted" in done.stdout
    assert [t.state.name for t in study(out).trials].count("RUNNING") == 0
    for row in (r for r in after if r["status"] == "interrupted"):  # each killed trial re-run exactly once
        assert [r["status"] for r in after if r["retry_of"] == row["number"]] == ["complete"]


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    other = tmp_path / "other"
    other.mkdir()
    (other / "tune.json").write_text(json.dumps({"config_id": "something else", "command": "fedinvert tune x"}))
    o = f"out={tmp_path / 'o'}"
    cases = [
        ([o, "--trials", "0"], "--trials"),
        ([o, "--trials", "-3"], "--trials"),
        ([o, "--trials", "2", "--space", "attack.nonsense=1:2"], "unknown key for attack"),
        ([o, "--trials", "2", "--space", "attack.distance=l2,cosine"], "defines the objective"),
        ([o, "--trials", "2", "--space", "attack.iterations=10:100"], "budget"),
        ([o, "--trials", "2", "--space", "model.width=0.5:1"], "only the attack's keywords"),
        ([o, "--trials", "2", "--space", "attack.lr=1:0.1"], "LOW must be below HIGH"),
        ([o, "--trials", "2", "--space", "attack.restarts=0:3"], "attack.restarts"),
        ([o, "--trials", "2", "--space", "attack.lr=0.1"], "attack.lr"),
        ([o, "--trials", "2", "--jobs", "0"], "--jobs"),
        (["--trials", "2"], "out=DIR"),
        ([f"out={user}", "--trials", "2"], "not a tune folder"),
        ([f"out={user / 'notes.txt' / 'deeper'}", "--trials", "2"], "is a file"),
        ([f"out={other}", "--trials", "2"], "another scenario"),
        ([o, "--trials", "2", "overwrite=true"], "sets it for every trial"),
    ]
    for args, message in cases:
        assert main(["tune", *SCENARIO, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args, err)
    assert not (tmp_path / "o").exists() and sorted(os.listdir(user)) == ["notes.txt"]
    assert sorted(os.listdir(other)) == ["tune.json"]
    assert main(["tune", "attack=dlg", "attack.iterations=5", o, "--trials", "2"]) == 2
    assert "no default search space" in capsys.readouterr().err


def test_space_entries_change_the_default_space_key_by_key(tmp_path):
    spec = tmp_path / "space.yaml"
    spec.write_text('attack.signed: [true, false]\nattack.tv: none\nattack.lr: "0.01:0.5:linear"\n')
    plan = plan_tune([*SCENARIO, f"out={tmp_path / 'o'}"], trials=3, space=[str(spec), "attack.restarts=1:8"])
    params = {p.key: p for p in plan.space.params}
    assert list(params) == ["attack.lr", "attack.schedule", "attack.restarts", "attack.signed"]
    assert (params["attack.lr"].kind, params["attack.lr"].low, params["attack.lr"].log) == ("float", 0.01, False)
    assert (params["attack.restarts"].kind, params["attack.restarts"].high) == ("int", 8)
    assert params["attack.signed"].choices == (True, False)
    assert plan.space.defaults == {"attack.lr": 0.1, "attack.schedule": "cosine", "attack.restarts": 1,
                                   "attack.signed": False}
    gifd = plan_tune(["preset=id-fashion", "attack.steps_per_stage=2", f"out={tmp_path / 'g'}"], trials=2)
    assert gifd.space.defaults["attack.radii_scale"] == 1.0 and gifd.base_radii == [0.1, 0.3, 0.6, 1.0]
    assert gifd.trial_config({"attack.radii_scale": 2.0})["attack"]["radii"] == [0.2, 0.6, 1.2, 2.0]
    assert not (tmp_path / "o").exists()


def test_a_damaged_study_is_one_clear_error(tmp_path):
    out = tmp_path / "t"
    plan = plan_tune([*SCENARIO, f"out={out}"], trials=2)
    out.mkdir()
    (out / "tune.json").write_text(json.dumps(plan.identity))
    (out / "tune.db").write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="tune.db is not a readable Optuna study"):
        run_tune(plan_tune([*SCENARIO, f"out={out}"], trials=2), progress=False)
