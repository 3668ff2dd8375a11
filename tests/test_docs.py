"""The documentation: the tutorials' commands stay valid, and the study pages show every figure of each report
with the command that regenerates it. (`make docs` builds the whole site with mkdocs --strict.)"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fedinvert.cli import main
from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


check = _script("check_tutorials")
hooks = _script("docs_hooks")
PAGES = sorted((ROOT / "docs" / "tutorials").glob("*.md"))


def _commands(sub: str) -> list[list[str]]:
    return [
        shlex.split(step.text)
        for page in PAGES
        for step in check.steps(page)
        if step.kind == "command" and shlex.split(step.text)[1] == sub
    ]


def test_every_tutorial_has_commands():
    assert [page.stem for page in PAGES] == ["analytic", "audit", "defenses", "generation", "optimization", "studies"]
    for page in PAGES:
        assert any(step.kind == "command" for step in check.steps(page)), page.name


@pytest.mark.parametrize("words", _commands("attack"), ids=lambda words: " ".join(words[2:5]))
def test_tutorial_attack_commands_resolve(words):
    overrides = words[2:]
    if any(word.startswith("observation=") for word in overrides) or "--config" in overrides:
        pytest.skip("needs the run folder an earlier command writes (scripts/check_tutorials.py runs it)")
    if check.expected_exit(words) == 2:  # a refusal the tutorial shows, with the message it prints
        with pytest.raises(ConfigError) as refused:
            resolve_config(overrides)
        assert f"error: {refused.value}" in (ROOT / "docs" / "tutorials" / "analytic.md").read_text(encoding="utf-8")
        return
    config = resolve_config(overrides)  # every key typed and checked, as `fedinvert attack` does first
    assert config["out"].startswith("runs/")


@pytest.mark.parametrize("words", [w for w in _commands("sweep") if w[2].startswith("benchmarks/")])
def test_tutorial_sweeps_of_committed_studies_plan(words, capsys):
    arguments = [word for word in words[1:] if word != "--dry-run"]
    assert main([*arguments, "--dry-run"]) == 0
    assert "runs over" in capsys.readouterr().out


def test_the_committed_studies_are_found():
    names = [folder.name for folder in hooks.study_folders(ROOT / "docs")]
    assert {"theorem1", "proposition1", "activation", "fedavg"} <= set(names)


@pytest.mark.parametrize("folder", hooks.study_folders(ROOT / "docs"), ids=lambda folder: folder.name)
def test_study_pages_show_every_figure_with_its_command(folder):
    page, images = hooks.study_page(folder)
    html = (folder / "report.html").read_text(encoding="utf-8")
    plots = html.count('<img class="plot"')
    cells = html.count('<h3 id="cell-')
    assert [name for name, _ in images] == [f"plot-{i}" + ".png" for i in range(1, plots + 1)] + [
        f"cell-{i}.png" for i in range(1, cells + 1)
    ]
    assert all(data.startswith(b"\x89PNG") for _, data in images)
    command = f"fedinvert sweep benchmarks/{folder.name}.yaml out=studies/{folder.name}"
    assert page.count(f"Regenerate: `{command}") == len(images)
    assert f"then `fedinvert report studies/{folder.name}`" in page
    assert (folder / "report.txt").read_text(encoding="utf-8").strip() in page


@pytest.mark.slow
def test_tutorial_commands_run():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_tutorials.py")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert done.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed")
