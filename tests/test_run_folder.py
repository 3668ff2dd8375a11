"""The run folder: checked before the attack, written whole, nothing finished lost, no user file deleted."""

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fedinvert.runner as runner
from fedinvert import memory
from fedinvert.attacks.optimization.dlg import IDLG
from fedinvert.cli import main
from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError
from fedinvert.run_folder import RUN_FILES, prepare

SMALL = ["model=lenet-dlg", "dataset=photos", "dataset.indices=[1]", "image_size=8", "batch_size=1", "attack=idlg",
         "attack.iterations=3", "attack.compile=false", "device=cpu", "progress=false", "seed=0",
         "metrics.st_lpips=false", "metrics.reid_distractors=2", "metrics.reference_draws=2"]
WRITTEN = {"config.yaml", "run.json", "metrics.json", "history.json", "tensors.safetensors",
           "observation.safetensors", "reconstruction.png", "loss.png"}


def _siblings(folder: Path) -> list[str]:
    """Temporary or moved-aside siblings left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def finished() -> runner.RunResult:
    """One finished tiny run, not written (each test writes its own copy)."""
    return runner.run(resolve_config(SMALL), write=False)


@pytest.fixture
def no_attack(monkeypatch):
    """Fail the test if the scenario or the attack starts: the refusals must come before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the run started although its output was refused")

    monkeypatch.setattr(runner, "_execute", refuse)


def _copy(result: runner.RunResult, **changes) -> runner.RunResult:
    return runner.RunResult(**{**result.__dict__, "out": None, **changes})


# -- overwrite ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["false", "maybe", 1, None])
def test_overwrite_must_be_a_boolean(tmp_path, finished, value, no_attack):
    out = tmp_path / "run"
    runner.write_run_folder(out, _copy(finished))
    before = (out / "metrics.json").read_bytes()
    cfg = {**finished.config, "out": str(out), "overwrite": value}

    with pytest.raises(ConfigError, match="overwrite:? must be true or false"):
        runner.run(cfg)

    assert (out / "metrics.json").read_bytes() == before
    assert _siblings(tmp_path) == []


def test_overwrite_replaces_a_run_folder_and_nothing_else(tmp_path, capsys, finished):
    out = tmp_path / "run"
    runner.write_run_folder(out, _copy(finished))
    (out / "run.json").write_text('{"old": true}')

    assert main(["attack", *SMALL, f"out={out}", "overwrite=true"]) == 0

    assert set(os.listdir(out)) == WRITTEN
    assert "old" not in json.loads((out / "run.json").read_text())
    assert _siblings(tmp_path) == []


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys, no_attack, one_error_line):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")

    assert main(["attack", *SMALL, f"out={out}", "overwrite=true"]) == 2

    assert "not a fedinvert run folder (it has no run.json)" in one_error_line(capsys)
    assert (out / "thesis.tex").read_text() == "years of work"
    assert _siblings(tmp_path) == []


def test_overwrite_refuses_a_run_folder_holding_a_users_file(tmp_path, capsys, finished, no_attack, one_error_line):
    out = tmp_path / "run"
    runner.write_run_folder(out, _copy(finished))
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()

    assert main(["attack", *SMALL, f"out={out}", "overwrite=true"]) == 2

    line = one_error_line(capsys)
    assert "holds files a run never writes (extra, notes.txt)" in line
    assert (out / "notes.txt").read_text() == "mine" and (out / "extra").is_dir()
    assert set(os.listdir(out)) >= WRITTEN


def test_a_file_as_out_is_refused_even_with_overwrite(tmp_path, capsys, no_attack, one_error_line):
    out = tmp_path / "results.csv"
    out.write_text("a,b\n")

    assert main(["attack", *SMALL, f"out={out}", "overwrite=true"]) == 2

    assert "is a file, not a folder" in one_error_line(capsys)
    assert out.read_text() == "a,b\n"


def test_an_empty_existing_folder_is_used(tmp_path, finished):
    out = tmp_path / "empty"
    out.mkdir()
    runner.write_run_folder(out, _copy(finished))
    assert set(os.listdir(out)) == WRITTEN


# -- unwritable places fail before the attack ------------------------------------------------------------
@contextlib.contextmanager
def _unwritable(folder: Path):
    """``folder`` made unwritable: immutable (chattr +i) as root, who ignores permissions; else mode 0o555."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("chattr is not installed")
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {made.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def test_path_through_a_file_fails_at_once(tmp_path, capsys, no_attack, one_error_line):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["attack", *SMALL, f"out={tmp_path / 'notes.txt' / 'run'}"]) == 2
    assert "which is a file, not a folder" in one_error_line(capsys)


def test_unwritable_parent_fails_at_once(tmp_path, capsys, no_attack, one_error_line):
    parent = tmp_path / "locked"
    parent.mkdir()
    with _unwritable(parent):
        assert main(["attack", *SMALL, f"out={parent / 'run'}"]) == 2
        line = one_error_line(capsys)
    assert f"out={parent / 'run'}: cannot write the run folder there" in line
    assert os.listdir(parent) == []


def test_read_only_working_folder_with_the_default_out_fails_at_once(tmp_path, capsys, monkeypatch, no_attack, one_error_line):
    monkeypatch.chdir(tmp_path)
    with _unwritable(tmp_path):
        assert main(["attack", *SMALL]) == 2
        line = one_error_line(capsys)
    assert "out=runs/idlg-" in line and "cannot create the folder" in line
    assert os.listdir(tmp_path) == []


def test_immutable_run_folder_is_refused_before_replacing(tmp_path, capsys, finished, no_attack, one_error_line):
    if os.geteuid() != 0:
        pytest.skip("a folder of mode 0o555 can still be renamed; only root can make it immutable")
    out = tmp_path / "run"
    runner.write_run_folder(out, _copy(finished))
    with _unwritable(out):
        code = main(["attack", *SMALL, f"out={out}", "overwrite=true"])
        line = one_error_line(capsys)
    assert code == 2 and "cannot write the run folder there" in line
    assert set(os.listdir(out)) == WRITTEN and _siblings(tmp_path) == []


def test_failed_run_leaves_no_folder_no_sibling_and_no_created_parent(tmp_path, capsys, one_error_line):
    out = tmp_path / "new" / "deeper" / "run"
    assert main(["attack", *SMALL, "dataset.indices=[999]", f"out={out}"]) == 2
    assert "999" in one_error_line(capsys)
    assert os.listdir(tmp_path) == []


# -- stale siblings ---------------------------------------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_siblings_are_removed_or_put_back(tmp_path, finished):
    out = tmp_path / "run"
    dead = _dead_pid()
    stale = tmp_path / f".run.tmp-{dead}"
    stale.mkdir()
    (stale / "config.yaml").write_text("half written")
    own = tmp_path / f".run.tmp-{os.getpid()}"
    own.mkdir()
    (own / "metrics.json").write_text("{}")
    alive = tmp_path / ".run.tmp-1"  # PID 1 always runs: another run may be writing there
    alive.mkdir()
    (alive / "run.json").write_text("{}")
    foreign = tmp_path / f".run.tmp-{dead + 1 if dead + 1 != os.getpid() else dead + 2}"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("not a run file")

    runner.write_run_folder(out, _copy(finished))

    assert not stale.exists()
    assert alive.is_dir() and foreign.is_dir() and (foreign / "mine.txt").is_file()
    assert _siblings(tmp_path) == sorted([alive.name, foreign.name])
    assert set(os.listdir(out)) == WRITTEN


def test_a_run_moved_aside_by_a_killed_overwrite_is_put_back(tmp_path, capsys, finished, no_attack, one_error_line):
    out = tmp_path / "run"
    runner.write_run_folder(out, _copy(finished))
    aside = tmp_path / f".run.old-{_dead_pid()}"
    out.rename(aside)  # as a process killed between the two renames of a replacement leaves it

    assert main(["attack", *SMALL, f"out={out}"]) == 2

    assert "exists and is not empty" in one_error_line(capsys)
    assert set(os.listdir(out)) == WRITTEN and not aside.exists()


def test_siblings_of_another_target_are_left_alone(tmp_path, finished):
    other = tmp_path / f".runs2.tmp-{_dead_pid()}"
    other.mkdir()
    runner.write_run_folder(tmp_path / "run", _copy(finished))
    assert other.is_dir()


# -- nothing finished is lost ----------------------------------------------------------------------------
def test_non_finite_numbers_are_written_as_null_with_a_warning(tmp_path, finished, caplog):
    metrics = {**finished.metrics, "distance": math.inf, "psnr": math.nan,
               "stages": [{"stage": "z", "distance": -math.inf, "psnr": 12.5}]}
    rec = runner.Reconstruction(images=finished.reconstruction.images, labels=None, score=math.inf,
                                history=[{"step": 0, "loss": math.nan, "distance": 1.0}])
    out = tmp_path / "run"

    with caplog.at_level("WARNING"):
        runner.write_run_folder(out, _copy(finished, metrics=metrics, reconstruction=rec))

    written = _strict_json(out / "metrics.json")
    assert written["distance"] is None and written["psnr"] is None
    assert written["stages"] == [{"stage": "z", "distance": None, "psnr": 12.5}]
    assert written["ssim"] == pytest.approx(finished.metrics["ssim"])
    assert _strict_json(out / "history.json") == [{"step": 0, "loss": None, "distance": 1.0}]
    warning = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("metrics.json"))
    assert warning.startswith("metrics.json: non-finite values written as null: ")
    assert set(warning.split(": ")[-1].split(", ")) == {"distance", "psnr", "stages[0].distance"}


def test_a_run_whose_metrics_fail_keeps_its_reconstruction(tmp_path, capsys, monkeypatch):
    original = IDLG.reconstruct

    def diverging(self, observation, **kwargs):
        rec = original(self, observation, **kwargs)
        rec.images = torch.full_like(rec.images, math.nan)  # as an attack whose step blew up returns
        return rec

    monkeypatch.setattr(IDLG, "reconstruct", diverging)
    out = tmp_path / "run"

    assert main(["attack", *SMALL, f"out={out}"]) == 0

    assert "PSNR n/a" in capsys.readouterr().out
    metrics = _strict_json(out / "metrics.json")
    assert metrics["psnr"] is None and metrics["ssim"] is None
    assert "NaN" in metrics["error"]
    tensors = load_file(str(out / "tensors.safetensors"))
    assert tensors["reconstruction"].shape == (1, 3, 8, 8) and torch.isnan(tensors["reconstruction"]).all()
    assert "private" in tensors and (out / "observation.safetensors").is_file()


def test_ctrl_c_during_the_write_completes_the_write(tmp_path, finished, monkeypatch, caplog):
    original = runner.save_grid

    def interrupted_save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of the write
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "save_grid", interrupted_save)
    out = tmp_path / "run"

    with caplog.at_level("WARNING"):
        runner.write_run_folder(out, _copy(finished))

    assert set(os.listdir(out)) == WRITTEN and _siblings(tmp_path) == []
    assert _strict_json(out / "metrics.json")["psnr"] == pytest.approx(finished.metrics["psnr"])
    assert "Ctrl-C came while the run folder was written; it was completed first" in caplog.text
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_an_exception_inside_the_write_leaves_no_half_written_folder(tmp_path, finished, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyboardInterrupt  # as a Ctrl-C that is not held back (outside the main thread) would

    monkeypatch.setattr(runner, "save_observation", broken)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        runner.write_run_folder(out, _copy(finished))
    assert os.listdir(tmp_path) == []


def test_a_target_changed_during_the_run_keeps_the_finished_run(tmp_path, finished):
    out = tmp_path / "run"
    target = prepare(out, overwrite=True)
    out.mkdir()  # another run finished there meanwhile, and the user added a file
    (out / "run.json").write_text("{}")
    (out / "later.txt").write_text("written while the attack ran")

    with pytest.raises(ConfigError, match=r"never writes \(later.txt\).*the finished run is in .*\.run\.tmp-"):
        runner.write_run_folder(out, _copy(finished), target=target)

    assert (out / "later.txt").read_text() == "written while the attack ran"
    assert set(os.listdir(target.tmp)) == WRITTEN
    shutil.rmtree(target.tmp)


def test_run_files_cover_every_file_a_run_writes():
    assert WRITTEN | {"stages.png", "sent_model.safetensors"} == RUN_FILES  # the last only from malicious runs


# -- sizes are bounded before the batch is allocated --------------------------------------------------------
def test_a_batch_too_large_for_memory_is_refused_with_the_numbers(tmp_path, capsys, monkeypatch, one_error_line):
    monkeypatch.setattr(memory, "available_memory", lambda: 10 * 2**20)
    monkeypatch.setattr(runner, "load_batch", lambda *a, **k: pytest.fail("the batch was allocated"))
    out = tmp_path / "run"

    assert main(["attack", *SMALL, "image_size=512", f"out={out}"]) == 2

    line = one_error_line(capsys)
    # 1 × 3 × 512 × 512 float32 × 8 copies = 24 MiB
    assert "needs at least 24.0 MiB of memory (batch 1×3×512×512 float32 × 8 copies)" in line
    assert "10.0 MiB available" in line
    assert os.listdir(tmp_path) == []


def test_a_label_space_too_large_for_memory_is_refused_before_the_victim_is_built(tmp_path, capsys, monkeypatch, one_error_line):
    monkeypatch.setattr(memory, "available_memory", lambda: 10 * 2**20)
    monkeypatch.setattr(runner, "build_model", lambda *a, **k: pytest.fail("the victim was allocated"))
    parameters = memory.parameter_count("lenet-dlg", in_channels=3, num_classes=100000, image_size=8)

    assert main(["attack", *SMALL, "num_classes=100000", f"out={tmp_path / 'run'}"]) == 2

    line = one_error_line(capsys)
    assert f"+ {parameters:,} victim parameters × 4 copies" in line
    assert parameters > 100000 * 48  # the head alone: 48 features per class at 8 px


def test_huge_image_size_fails_at_once(tmp_path, capsys, one_error_line):
    assert main(["attack", *SMALL, "image_size=100000", f"out={tmp_path / 'run'}"]) == 2
    assert "image_size" in one_error_line(capsys)


def test_memory_helpers():
    available = memory.available_memory()
    assert available is None or available > 0
    assert memory.format_bytes(512) == "512 B" and memory.format_bytes(1.5 * 2**30) == "1.5 GiB"
    assert memory.check_memory(images=2, channels=3, height=8, width=8) == 2 * 3 * 64 * 4 * 8


def test_available_memory_reads_meminfo_and_falls_back_to_psutil(monkeypatch):
    meminfo = memory._proc_meminfo()
    headroom = memory._cgroup_headroom()
    if meminfo is not None:  # Linux: MemAvailable (what psutil reports there), capped by a cgroup limit
        assert memory.available_memory() == (meminfo if headroom is None else min(meminfo, headroom))
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(memory, "_proc_meminfo", lambda: None)
    monkeypatch.setattr(memory, "_cgroup_headroom", lambda: None)
    found = memory.available_memory()
    assert found is not None and abs(found - psutil.virtual_memory().available) < 2**30


def test_loss_plot_draws_each_restart_falling_on_a_log_axis(tmp_path):
    import numpy as np
    from PIL import Image

    from fedinvert.report.figures import LINE_COLOURS, save_loss_plot

    history = [{"step": s, "distance": 10 ** (-s / 100) * (1 + r), "restart": r} for r in (0, 1)
               for s in range(10, 310, 10)]
    save_loss_plot(tmp_path / "loss.png", history, title="inverting_gradients")

    img = np.asarray(Image.open(tmp_path / "loss.png").convert("RGB"))
    assert img.shape == (350, 600, 3)
    for n in (0, 1):
        colour = np.array([int(LINE_COLOURS[n][i : i + 2], 16) for i in (1, 3, 5)])
        ys, xs = np.nonzero((img == colour).all(axis=2))
        line = xs < 560  # leave out the legend at the right
        first, last = ys[line][xs[line] == xs[line].min()].mean(), ys[line][xs[line] == xs[line].max()].mean()
        assert xs[line].max() - xs[line].min() > 400 and last - first > 150  # falls left to right (194 px here)
