"""`fedinvert report DIR`: a study folder of tiny real runs, its text tables and its self-contained HTML page."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError
from fedinvert.report.study import cells, comparisons, load_study, text_report, write_report
from fedinvert.runner import run

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.is_file(),
                                    reason="/usr/bin/chromium is absent (make report-check installs it)")
HAS_FACE_WHEEL = importlib.util.find_spec("gan_face_generate") is not None
BASE = ["progress=false", "attack.compile=false", "device=cpu", "image_size=16", "dataset=photos"]
ATTACKS = {
    "inverting_gradients": ["attack=inverting_gradients", "attack.iterations=20", "model=lenet-dlg"],
    # GIFD writes stages.png and metrics `stages`; without the face wheel DLG stands in as the second attack
    "gifd": ["attack=gifd", "prior=face-dcgan", "model=convnet", "model.width=0.25", "attack.steps_per_stage=3",
             "attack.restarts=1"],
    "dlg": ["attack=dlg", "attack.iterations=5", "model=lenet-dlg"],
}
OTHER = "gifd" if HAS_FACE_WHEEL else "dlg"
AXES = ["attack.name", "batch_size", "seed"]
METRICS = ["psnr", "ssim", "mse", "label_accuracy", "leakage_db", "reference_psnr", "reid_top1", "seconds",
           "iterations"]
FAILED = ("failed-run", OTHER, 2, 2, 'RuntimeError: <boom> & "quoted"')


def _csv_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A study folder as `fedinvert sweep` writes it: 2 attacks × 2 batch sizes × 3 seeds of tiny real runs, the
    last of them (OTHER, B = 2, seed 2) a failed row with an error holding HTML."""
    folder = tmp_path_factory.mktemp("study")
    rows = []
    for attack in ("inverting_gradients", OTHER):
        for batch_size in (1, 2):
            for seed in (0, 1, 2):
                values = {"attack.name": attack, "batch_size": batch_size, "seed": seed}
                if (attack, batch_size, seed) == FAILED[1:4]:
                    rows.append({"id": FAILED[0], "status": "failed", "error": FAILED[4], "folder": "",
                                 **{k: _csv_value(v) for k, v in values.items()}})
                    continue
                run_id = f"{attack}-b{batch_size}-s{seed}"
                run(resolve_config([*BASE, *ATTACKS[attack], f"batch_size={batch_size}", f"seed={seed}",
                                    f"out={folder / 'runs' / run_id}"]))
                m = json.loads((folder / "runs" / run_id / "metrics.json").read_text())
                flat = {k: m.get(k) for k in METRICS if k != "reference_psnr"}
                flat["reference_psnr"] = m["reference"]["psnr"]
                rows.append({"id": run_id, "status": "ok", "error": "", "folder": f"runs/{run_id}",
                             **{k: _csv_value(v) for k, v in values.items()},
                             **{k: "" if v is None else v for k, v in flat.items()}})
    (folder / "sweep.json").write_text(json.dumps({
        "name": "tiny <study>", "description": "IG against GIFD & batch size", "axes": AXES, "replicates": ["seed"],
        "compare": [{"axis": "attack.name", "baseline": "inverting_gradients"}], "total": len(rows),
        "command": "fedinvert sweep tiny.yaml out=DIR",
    }))
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "status", "error", *AXES, *METRICS, "folder"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return folder


def _metrics(folder: Path, attack: str, batch_size: int) -> list[dict]:
    runs = sorted((folder / "runs").glob(f"{attack}-b{batch_size}-s*"))
    return [json.loads((r / "metrics.json").read_text()) for r in runs]


def _interval(values: list[float]) -> tuple[float, float]:
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    return float(np.mean(values)), float(half)


def _row(text: str, *first: str, after: str = "") -> list[str]:
    """The fields of the first table row starting with ``first`` after the line that starts with ``after``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    for line in lines[start:]:
        fields = re.split(r"\s{2,}", line.strip())
        if fields[: len(first)] == list(first):
            return fields
    raise AssertionError(f"no row starting {first} in\n{text}")


# -- the tables ---------------------------------------------------------------------------------------------
def test_text_report_numbers_match_the_run_folders(study):
    # Prepare
    text = text_report(study)
    # Execute / Assert: every cell, from the runs' own metrics.json
    assert text.startswith("study tiny <study>: IG against GIFD & batch size\n")
    assert "runs: 11 finished, 1 failed, of 12 planned" in text
    for attack in ("inverting_gradients", OTHER):
        for batch_size in (1, 2):
            ms = _metrics(study, attack, batch_size)
            psnr, psnr_half = _interval([m["psnr"] for m in ms])
            leak, leak_half = _interval([m["leakage_db"] for m in ms])
            reference = float(np.mean([m["reference"]["psnr"] for m in ms]))
            failed = int((attack, batch_size) == FAILED[1:3])
            row = _row(text, attack, str(batch_size))
            assert row[2:7] == [str(len(ms)), str(failed), f"{psnr:.2f} ± {psnr_half:.2f}", f"{reference:.2f}",
                                f"{leak:+.2f} ± {leak_half:.2f}"]
            assert len(ms) == 3 - failed
            verdict = f"leaks {leak:+.2f} ± {leak_half:.2f} dB" if leak - leak_half > 0 else "no leak measured"
            assert row[-1] == verdict
    # the paired table: OTHER − IG on the same batch size and seed, from the metrics files
    for batch_size in (1, 2):
        seeds = (0, 1) if batch_size == 2 else (0, 1, 2)
        diffs = [json.loads((study / "runs" / f"{OTHER}-b{batch_size}-s{s}" / "metrics.json").read_text())["leakage_db"]
                 - json.loads((study / "runs" / f"inverting_gradients-b{batch_size}-s{s}" / "metrics.json")
                              .read_text())["leakage_db"] for s in seeds]
        mean, half = _interval(diffs)
        row = _row(text, OTHER, str(batch_size), after="paired:")
        assert row[2:4] == [f"{len(seeds)}*", f"{mean:+.2f} ± {half:.2f}"]
        assert row[-1] == (f"{mean:+.2f} ± {half:.2f} dB" if abs(mean) > half else "not resolved")
    pooled = _row(text, OTHER, "(all)", after="paired:")
    assert pooled[2] == "5*"
    assert f"failed-run  attack.name={OTHER} batch_size=2 seed=2: {FAILED[4]}" in text


def test_cells_pool_the_replicates_and_pairs_match_every_other_axis(study):
    found = cells(load_study(study))
    assert [(c.values["attack.name"], c.values["batch_size"], c.n, len(c.failed)) for c in found] == [
        ("inverting_gradients", "1", 3, 0), ("inverting_gradients", "2", 3, 0), (OTHER, "1", 3, 0), (OTHER, "2", 2, 1)]
    (comparison,) = comparisons(load_study(study))
    assert comparison.baseline == "inverting_gradients" and comparison.others == [OTHER]
    assert [(r.setting, r.pooled, r.n) for r in comparison.rows] == [
        ({"batch_size": "1"}, False, 3), ({"batch_size": "2"}, False, 2), ({}, True, 5)]


def test_a_leaking_cell_and_a_resolved_difference(tmp_path):
    # a hand-written folder without run folders: the verdicts' other branch, and a page with no pictures
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "v", "axes": ["attack.name", "seed"],
                                                     "compare": [{"axis": "attack.name", "baseline": "a"}]}))
    lines = ["id,status,error,attack.name,seed," + ",".join(METRICS) + ",folder"]
    for i, (name, leak) in enumerate([("a", 1.0), ("a", 1.5), ("a", 2.0), ("b", 5.0), ("b", 6.0), ("b", 7.0)]):
        lines.append(f"r{i},ok,,{name},{i % 3},{20 + leak},0.5,0.01,1.0,{leak},20,1.0,0.1,10,")
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    a, b = cells(load_study(tmp_path))
    assert b.verdict == "leaks +6.00 ± 2.48 dB" and b.leakage_db is not None
    assert b.leakage_db.half == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3))
    assert a.verdict == "leaks +1.50 ± 1.24 dB"
    (row,) = comparisons(load_study(tmp_path))[0].rows
    assert row.n == 3 and row.diff is not None and row.verdict == "+4.50 ± 1.24 dB"
    page = write_report(tmp_path).read_text()
    assert "reconstruction.png is missing" in page


def test_a_comparison_along_a_zipped_axis_holds_its_partners(tmp_path):
    # attack.name is zipped with its budget (attack): pairs match seeds although the budgets differ
    (tmp_path / "sweep.json").write_text(json.dumps({
        "name": "z", "axes": ["attack.name", "attack", "seed"], "zip": [["attack.name", "attack"]],
        "compare": [{"axis": "attack.name", "baseline": "a"}]}))
    lines = ["id,status,error,attack.name,attack,seed," + ",".join(METRICS) + ",folder"]
    for i, (name, budget, leak) in enumerate([("a", "x", 1.0), ("a", "x", 1.5), ("a", "x", 2.0),
                                              ("b", "y", 5.0), ("b", "y", 6.0), ("b", "y", 7.0)]):
        lines.append(f"r{i},ok,,{name},{budget},{i % 3},{20 + leak},0.5,0.01,1.0,{leak},20,1.0,0.1,10,")
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    (row,) = comparisons(load_study(tmp_path))[0].rows
    assert row.n == 3 and row.setting == {} and row.verdict == "+4.50 ± 1.24 dB"
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "z", "axes": ["attack.name", "seed"],
                                                     "zip": [["attack.name", "nope"]]}))
    with pytest.raises(ConfigError, match="'zip' must be"):
        load_study(tmp_path)


def test_a_zip_group_of_several_cells_pairs_each_run_with_its_own_partners(tmp_path):
    # (batch_size, aux) zipped as three cells: (1, same), (1, other), (4, same); compare aux against other and
    # batch_size against 4. A (4, same) run has no (4, other) partner: it must stay unpaired, not meet (1, other)
    (tmp_path / "sweep.json").write_text(json.dumps({
        "name": "z", "axes": ["batch_size", "aux", "seed"], "zip": [["batch_size", "aux"]],
        "compare": [{"axis": "aux", "baseline": "other"}, {"axis": "batch_size", "baseline": 4}]}))
    lines = ["id,status,error,batch_size,aux,seed," + ",".join(METRICS) + ",folder"]
    cells = {(1, "same"): 10.0, (1, "other"): 1.0, (4, "same"): 4.0}
    for i, ((b, aux), leak) in enumerate(cells.items()):
        for seed in range(3):
            value = leak + seed
            lines.append(f"r{i}{seed},ok,,{b},{aux},{seed},{20 + value},0.5,0.01,1.0,{value},20,1.0,0.1,10,")
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")

    by_aux, by_batch = comparisons(load_study(tmp_path))

    (aux_row,) = by_aux.rows
    assert aux_row.n == 3 and aux_row.diff.mean == pytest.approx(9.0)  # (1, same) − (1, other) only
    (batch_row,) = by_batch.rows
    assert batch_row.n == 3 and batch_row.diff.mean == pytest.approx(6.0)  # (1, same) − (4, same)


# -- the page ---------------------------------------------------------------------------------------------
def _chromium(page: Path, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp / 'chromium-profile'}", *args, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)


def test_html_report_is_self_contained_and_escaped(study, tmp_path):
    out = write_report(study, tmp_path / "page.html")
    page = out.read_text()
    assert out == tmp_path / "page.html" and not list(tmp_path.glob(".page.html.tmp-*"))
    assert not re.search(r"(src|href)=\"(https?:|//)", page) and "<link" not in page and "@import" not in page
    assert "&lt;boom&gt; &amp; &quot;quoted&quot;" in page and "<boom>" not in page
    assert "<h1>tiny &lt;study&gt;</h1>" in page
    assert 'href="data:text/csv;charset=utf-8;base64,' in page
    assert f'href="../{study.name}/results.csv"' in page  # the CSV beside the study, relative to the page
    assert write_report(study) == study / "report.html" and 'href="results.csv"' in (study / "report.html").read_text()


@needs_chromium
def test_html_report_renders_in_headless_chromium(study, tmp_path):
    # Prepare
    out = write_report(study)
    stage_runs = 5 if HAS_FACE_WHEEL else 0
    # 3 + 3 + 3 + 2 reconstructions, GIFD's stages.png for each shown run, one plot (batch_size)
    expect_images = 11 + stage_runs + 1
    # cells, one paired table, a stage table per GIFD run shown, failed runs, all runs
    expect_tables = 4 + stage_runs
    # Execute
    shot = tmp_path / "page.png"
    done = _chromium(out, f"--screenshot={shot}", "--window-size=1200,2000", tmp=tmp_path)
    dom = _chromium(out, "--dump-dom", "--virtual-time-budget=5000", tmp=tmp_path)
    # Assert: a real picture, not a blank page
    assert shot.is_file(), done.stderr[-2000:]
    assert shot.stat().st_size > 30_000
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    # the browser decoded every embedded image, and every table holds rows
    found = re.search(r'data-check="images=(\d+) loaded=(\d+) tables=(\d+) filled=(\d+)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    images, loaded, tables, filled = map(int, found.groups())
    print(f"browser check: images={images} loaded={loaded} tables={tables} filled={filled}")
    assert (images, loaded) == (expect_images, expect_images)
    assert (tables, filled) == (expect_tables, expect_tables)


# -- bad input ----------------------------------------------------------------------------------------------
def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.startswith("report: ")
    return message


def test_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        text_report(tmp_path / "nowhere")
    assert "does not exist" in _one_line(err)


def test_a_folder_without_sweep_json_is_one_line(tmp_path):
    (tmp_path / "results.csv").write_text("id,status\n")
    with pytest.raises(ConfigError) as err:
        write_report(tmp_path)
    assert "no sweep.json" in _one_line(err)
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(("csv_text", "message"), [
    ("id,status,error,attack.name,batch_size,seed\nx,ok,,a,1,0\n", "no column psnr"),
    (None, "has 3 fields, the header has"),
    (None, "not a finite number"),
    (None, "status must be ok or failed"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
])
def test_a_corrupt_results_csv_is_one_line(study, tmp_path, csv_text, message):
    # Prepare: a copy of the study folder's sweep.json and a broken results.csv
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copy(study / "sweep.json", folder / "sweep.json")
    good = (study / "results.csv").read_text().splitlines()
    if csv_text is None:
        second = good[1].split(",")
        broken = {"has 3 fields, the header has": ",".join(second[:3]),
                  "not a finite number": ",".join([*second[:6], "many", *second[7:]]),
                  "status must be ok or failed": ",".join([second[0], "done", *second[2:]])}[message]
        csv_text = "\n".join([good[0], broken]) + "\n"
    if isinstance(csv_text, bytes):
        (folder / "results.csv").write_bytes(csv_text)
    else:
        (folder / "results.csv").write_text(csv_text)
    # Execute / Assert
    with pytest.raises(ConfigError) as err:
        text_report(folder)
    assert message in _one_line(err)


def test_an_empty_study_and_an_unwritable_out(study, tmp_path):
    # a sweep that has stored nothing yet: a header-only results.csv gives pages without empty tables
    shutil.copy(study / "sweep.json", tmp_path / "sweep.json")
    (tmp_path / "results.csv").write_text((study / "results.csv").read_text().splitlines()[0] + "\n")
    assert "(results.csv holds no run yet)" in text_report(tmp_path)
    assert "<tbody>" not in write_report(tmp_path).read_text()
    with pytest.raises(ConfigError) as err:
        write_report(tmp_path, tmp_path / "missing" / "page.html")
    assert "cannot write" in _one_line(err)
    assert not (tmp_path / "missing").exists()


def test_corrupt_sweep_json_is_one_line(tmp_path):
    (tmp_path / "sweep.json").write_text('{"axes": [')
    with pytest.raises(ConfigError) as err:
        load_study(tmp_path)
    assert "not valid JSON" in _one_line(err)
    (tmp_path / "sweep.json").write_text('{"axes": ["seed"], "compare": [{"axis": "lr", "baseline": 1}]}')
    with pytest.raises(ConfigError) as err:
        load_study(tmp_path)
    assert "is not an axis" in _one_line(err)


def test_a_resolved_difference_between_two_non_leaking_sides_is_no_ranking():
    from fedinvert.report.study import Interval, PairedRow

    leaking = PairedRow("b", {}, False, Interval(1.0, 0.5, 8), 1.0, True)
    neither = PairedRow("b", {}, False, Interval(1.0, 0.5, 8), 1.0, False)
    assert leaking.verdict == "+1.00 ± 0.50 dB"
    assert neither.verdict == "+1.00 ± 0.50 dB, neither side leaks"
    assert PairedRow("b", {}, False, Interval(0.1, 0.5, 8), 0.1, False).verdict == "not resolved"


def test_exact_share_of_an_imprint_run_reaches_the_report(tmp_path):
    # a real analytic run: its share of images at >= 60 dB after matching, through results.csv into the table
    from fedinvert.sweep.store import EXACT_PSNR_DB, metric_row

    out = tmp_path / "runs" / "imp"
    run(resolve_config(["progress=false", "device=cpu", "attack=imprint", "threat.server=malicious",
                        "model=convnet", "model.width=0.25", "dataset=fashion-mnist", "image_size=28",
                        "channels=1", "batch_size=8", "seed=0", f"out={out}"]))
    metrics = json.loads((out / "metrics.json").read_text())
    scores = [p["psnr"] for p in metrics["per_image"]]
    share = metric_row(metrics)["exact_share"]
    assert share == sum(s >= EXACT_PSNR_DB for s in scores) / 8
    assert 0.5 <= share <= 1.0  # imprint recovers most of 8 images exactly (measured: 8 of 8 at seed 0)
    assert metric_row({"per_image": []})["exact_share"] is None
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "e", "axes": ["seed"], "replicates": ["seed"]}))
    flat = metric_row(metrics)
    header = ["id", "status", "error", "seed", *METRICS, "exact_share", "folder"]
    line = ["imp", "ok", "", "0", *("" if flat.get(k) is None else str(flat[k]) for k in METRICS), str(share),
            "runs/imp"]
    (tmp_path / "results.csv").write_text(",".join(header) + "\n" + ",".join(line) + "\n")
    (cell,) = cells(load_study(tmp_path))
    assert cell.exact_share == pytest.approx(share)
    lines = text_report(tmp_path).splitlines()
    at = next(i for i, text in enumerate(lines) if "exact share" in text)
    header_fields, row_fields = (re.split(r"\s{2,}", lines[i].strip()) for i in (at, at + 2))
    assert row_fields[header_fields.index("exact share")] == f"{share:.2f}"
