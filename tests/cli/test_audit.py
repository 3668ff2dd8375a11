"""`fedinvert audit`: refused inputs, a tiny audit end to end, resuming, and numbers that match the stored runs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from fedinvert.cli import main
from fedinvert.report.study import t_interval

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["budget.batches=2", "budget.iterations=10", "budget.gifd_steps=2", "budget.rounds=2", "budget.clients=2",
        "--threads", "1", "--no-progress"]
SETUP = ["model=convnet", "model.width=0.5", "dataset=fashion-mnist", "image_size=16", "protocol=fedavg",
         "defense=[clipping,gaussian_noise]"]


def _audit(out: Path, *extra: str) -> list[str]:
    return ["audit", *SETUP, *TINY, *extra, f"out={out}"]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One tiny audit of the FedAvg ConvNet with two defences, and what it printed."""
    out = tmp_path_factory.mktemp("audit") / "dir"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(_audit(out))
    assert code == 0
    return out, printed.getvalue()


@pytest.mark.parametrize("args, message", [
    (["colour=red"], "colour: unknown config key"),
    (["--budget", "huge"], "--budget: unknown budget 'huge'"),
    (["budget.speed=3"], "budget.speed: unknown budget key"),
    (["budget.batches=0"], "budget.batches must be a whole number ≥ 1"),
    (["attack=gifd"], "attack: the audit runs one attack per family itself"),
    (["dataset.batch=3"], "dataset.batch: the audit sets it"),
    (["defense=[nosuch]"], "unknown defense 'nosuch'"),
    (["model=nosuchmodule:build"], "cannot import nosuchmodule"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "audit"

    code = main(["audit", *SETUP, *TINY, *args, f"out={out}"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1
    assert message in err
    assert not out.exists()  # nothing half-written


def test_out_is_required_and_must_be_writable(tmp_path, capsys):
    assert main(["audit", *SETUP, *TINY]) == 2
    assert "audit needs out=DIR" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(_audit(blocker / "sub")) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(_audit(other)) == 2
    assert "is not an audit folder" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_folder_of_another_audit_is_refused(audited, capsys):
    out, _ = audited
    before = sorted(p.name for p in (out / "runs").iterdir())

    code = main(_audit(out, "budget.iterations=11"))

    assert code == 2
    assert "holds an audit of another configuration or budget" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "runs").iterdir()) == before


def test_tiny_audit_writes_its_files_and_names_each_threat(audited):
    out, printed = audited

    lines = printed.strip().splitlines()

    for name in ("audit.txt", "audit.html", "audit.json", "report.html", "results.csv"):
        assert (out / name).is_file(), name
    assert (out / "audit.txt").read_text() == printed
    assert len(lines) <= 40
    for threat in ("optimisation-based", "generation-based", "label inference", "analysis-based attack not run"):
        assert threat in printed, threat
    for phase in ("1. network design", "2. training protocol", "3. client verification"):
        assert phase in printed
    assert re.search(r"leakage [-+]\d+\.\d+ ± \d+\.\d+ dB", printed)
    assert "verify-model on the model your clients receive" in printed and "clean" in printed
    page = (out / "audit.html").read_text()
    assert "http://" not in page and "https://" not in page and "data:image/png;base64," in page


def test_rerunning_resumes_and_repeats_no_run(audited, capsys):
    out, _ = audited
    runs = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}

    code = main(_audit(out))

    printed = capsys.readouterr().out
    assert code == 0
    stored = re.search(r"(\d+) runs \((\d+) already stored, (\d+) now", printed)
    assert stored is not None and stored.group(1) == stored.group(2) and stored.group(3) == "0"
    assert {p.name: (p / "metrics.json").stat().st_mtime_ns for p in (out / "runs").iterdir()} == runs


def test_a_defence_difference_is_the_paired_difference_of_the_stored_runs(audited):
    out, _ = audited
    report = json.loads((out / "audit.json").read_text())
    with (out / "results.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["status"] == "ok"]
    leakage = {(r["condition"], r["seed"]): float(r["leakage_db"]) for r in rows}
    accuracy = {c["key"]: c["test_accuracy"] for c in report["conditions"]}

    checked = 0
    for diff in report["differences"]:
        if not diff["condition"].startswith("stronger:"):
            continue
        seeds = sorted({seed for cond, seed in leakage if cond == diff["condition"]})
        expected = t_interval([leakage[(diff["condition"], s)] - leakage[(diff["baseline"], s)] for s in seeds])
        assert diff["leakage_db"]["mean"] == pytest.approx(expected.mean, abs=1e-9)
        assert diff["leakage_db"]["n"] == len(seeds) == 2
        assert diff["accuracy_points"]["mean"] == pytest.approx(
            100 * (accuracy[diff["condition"]] - accuracy[diff["baseline"]]), abs=1e-6)
        checked += 1
    assert checked == 2  # clipping and gaussian_noise, each made stronger


def test_malicious_server_adds_the_analysis_attack_and_verify_flags_its_model(tmp_path, capsys):
    out = tmp_path / "malicious"

    code = main(["audit", "model=convnet", "model.width=0.5", "dataset=fashion-mnist", "image_size=16",
                 "threat.server=malicious", "budget.levers=[]", *TINY, f"out={out}"])

    printed = capsys.readouterr().out
    assert code == 0
    assert "analysis-based (imprint" in printed
    assert re.search(r"verify-model on the model the malicious server sent \(imprint\): SUSPICIOUS", printed)
    assert "verify-model on the model your clients receive" in printed


def _threat(leakage: list[float], hits: int, images: int):
    from fedinvert.audit.battery import Condition
    from fedinvert.audit.findings import ConditionResult

    condition = Condition(key="op", kind="threat", label="IG", overrides=())
    return ConditionResult(condition=condition, runs=[object()] * len(leakage), failed=0, psnr=t_interval(leakage),
                           leakage=t_interval(leakage), reference=11.0, reid=hits / images, reid_chance=0.01,
                           labels=None, reid_hits=hits, reid_images=images)


def test_re_identification_above_chance_is_a_leak_though_the_psnr_interval_straddles_zero():
    # the lenet-dlg quick audit measured leakage +3.92 ± 4.77 dB with 7 of 8 images re-identified (chance 1 %)
    wide = [9.0, 8.0, 7.5, 6.5, 6.0, 5.0, 0.4, -11.0]
    assert t_interval(wide).low < 0

    recognised = _threat(wide, hits=7, images=8)
    chance_level = _threat(wide, hits=0, images=8)

    assert recognised.leaks and recognised.reid_pvalue == pytest.approx(8 * 0.01**7 * 0.99 + 0.01**8, rel=1e-6)
    assert "re-identified 7 of 8 images" in recognised.verdict
    assert not chance_level.leaks and chance_level.reid_pvalue == pytest.approx(1.0)
