"""Run every command of the tutorials (docs/tutorials/*.md) at a tiny budget and say which ones fail.

    OMP_NUM_THREADS=1 python scripts/check_tutorials.py            # all tutorials, a few minutes on a CPU
    python scripts/check_tutorials.py docs/tutorials/analytic.md   # one of them

Each ``fedinvert ...`` line of a ```` ```bash ```` block runs in one scratch folder (``benchmarks/`` linked
into it), in page order, with its attack's budget cut down (`TINY`) and progress bars off; ```` ```python ````
blocks run as they are; a ```` ```yaml ```` or ```` ```python ```` block after "Save this as `NAME`" is written to
NAME instead; ``fedinvert audit`` runs at a tiny budget (`TINY_AUDIT`). A
command must exit as `expected_exit` says (0, or 1 for a suspicious ``verify-model``, 2 for a refused input).
Prints one line per command and ends with ``N passed, N failed``; exits 1 when any failed.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"
PRESETS = ROOT / "src" / "fedinvert" / "config" / "presets"

#: Attack name -> the overrides that make its run take seconds.
TINY: dict[str, tuple[str, ...]] = {
    "inverting_gradients": ("attack.iterations=20",),
    "dlg": ("attack.iterations=20",),
    "idlg": ("attack.iterations=20",),
    "gradinversion": ("attack.iterations=20", "attack.restarts=1"),
    "fishing": ("attack.iterations=20",),
    "gifd": ("attack.steps_per_stage=3", "attack.restarts=1"),
    "gifd-z": ("attack.steps_per_stage=3", "attack.restarts=1"),
    "ggl": ("attack.iterations=3", "attack.population=4"),
    "gias": ("attack.latent_steps=3", "attack.finetune_steps=3"),
    "ci_net": ("attack.steps=20",),
}
#: Sweeps in the tutorials vary Inverting Gradients only; this shrinks every run of theirs.
TINY_SWEEP = ("attack.iterations=20",)
#: An audit's budget cut to seconds: two private batches, a few steps, two rounds of accuracy training.
TINY_AUDIT = ("budget.batches=2", "budget.iterations=10", "budget.gifd_steps=2", "budget.rounds=2",
              "budget.clients=2", "--no-progress")


@dataclass(frozen=True)
class Step:
    """One thing to run: a shell command line, a Python script, or a file to write."""

    kind: str  # "command", "python" or "file"
    text: str
    source: str  # tutorial:line
    name: str | None = None  # the file to write (kind "file")


def steps(page: Path) -> list[Step]:
    """The commands, Python blocks and files of one tutorial, in page order."""
    found: list[Step] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    save_as: str | None = None
    i = 0
    while i < len(lines):
        match = re.search(r"Save this as `([^`]+)`", lines[i])
        if match:
            save_as = match.group(1)
        fence = re.match(r"^```(\w+)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, language = i, fence.group(1)
        i += 1
        block: list[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            block.append(lines[i])
            i += 1
        where = f"{page.name}:{start + 1}"
        if language == "bash":
            found += [Step("command", line.strip(), where) for line in block if line.strip().startswith("fedinvert ")]
        elif language == "python" and not save_as:
            found.append(Step("python", "\n".join(block), where))
        elif language in ("yaml", "python") and save_as:
            found.append(Step("file", "\n".join(block) + "\n", where, name=save_as))
            save_as = None
        i += 1
    return found


def attack_name(words: list[str], folder: Path) -> str | None:
    """The attack a ``fedinvert attack`` command runs: ``attack=``, else its preset's, else its config's."""
    for word in words:
        if word.startswith(("attack=", "attack.name=")):
            return word.split("=", 1)[1]
    sources = [PRESETS / f"{w.split('=', 1)[1]}.yaml" for w in words if w.startswith("preset=")]
    if "--config" in words:
        sources.append(folder / words[words.index("--config") + 1])
    for source in sources:
        attack = (yaml.safe_load(source.read_text(encoding="utf-8")) or {}).get("attack")
        if isinstance(attack, dict):
            return str(attack.get("name"))
    return None


def expected_exit(words: list[str]) -> int:
    """0, except where a tutorial shows a refusal: a suspicious model (1), a malicious attack on an honest server (2)."""
    if words[1] == "verify-model":
        return 1
    if words[1] == "attack" and "attack=imprint" in words and "threat.server=malicious" not in words:
        return 2
    return 0


def tiny(words: list[str], folder: Path) -> list[str]:
    """``words`` (``fedinvert SUB ...``) with the budget cut down and progress off."""
    if words[1] == "attack":
        return [*words, *TINY.get(attack_name(words, folder) or "inverting_gradients", ()), "progress=false"]
    if words[1] == "audit":
        return [*words, *TINY_AUDIT]
    if words[1] == "sweep" and "--dry-run" not in words:
        out = next(i for i, w in enumerate(words) if w.startswith("out="))
        return [*words[: out + 1], *TINY_SWEEP, *words[out + 1 :], "--no-progress"]
    return words


def run_step(step: Step, folder: Path) -> tuple[bool, str]:
    """Run one step in ``folder``; (passed, what happened)."""
    if step.kind == "file":
        (folder / str(step.name)).write_text(step.text, encoding="utf-8")
        return True, f"wrote {step.name}"
    if step.kind == "python":
        argv, expected = [sys.executable, "-c", step.text], 0
    else:
        words = shlex.split(step.text)
        argv, expected = [sys.executable, "-m", "fedinvert", *tiny(words, folder)[1:]], expected_exit(words)
    done = subprocess.run(argv, cwd=folder, capture_output=True, text=True, check=False)
    tail = (done.stdout + done.stderr).strip().splitlines()
    last = tail[-1] if tail else ""
    return done.returncode == expected, f"exit {done.returncode} (expected {expected}): {last[:160]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pages", nargs="*", type=Path, help="tutorials to check (default: all)")
    args = parser.parse_args()
    pages = args.pages or sorted(TUTORIALS.glob("*.md"))
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="fedinvert-tutorials-") as scratch:
        folder = Path(scratch)
        (folder / "benchmarks").symlink_to(ROOT / "benchmarks")
        for page in pages:
            for step in steps(page):
                started = time.perf_counter()
                ok, what = run_step(step, folder)
                passed, failed = passed + ok, failed + (not ok)
                label = step.text.splitlines()[0] if step.kind != "file" else f"(file {step.name})"
                print(f"{'ok  ' if ok else 'FAIL'} {time.perf_counter() - started:6.1f} s  {step.source}  {label}")
                if not ok:
                    print(f"       {what}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
