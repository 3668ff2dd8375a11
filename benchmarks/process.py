"""Whole-process time of a short Inverting Gradients run: ``fedinvert attack`` against a plain PyTorch script.

Both are started as fresh processes, interleaved, ``--repeats`` times each, and timed from the outside (wall
clock of the whole process: interpreter start, imports, data, victim, the steps, evaluation, writing). The plain
script (`bare_process.py`, beside this file) imports torch and PIL, reads one photo (written here once as a PNG
by fedinvert's ``photos`` loader, so both see the same pixels), builds DLG's sigmoid LeNet, computes the true
gradient and runs the plain loop (Adam lr 0.1, 1 − cosine + 1e-4 · TV, clamp) for ``--steps`` steps, then
writes the image as a PNG. fedinvert runs ``attack=inverting_gradients model=lenet-dlg dataset=photos
image_size=32 batch_size=1 attack.iterations=N`` with everything it does by default (label inference, the
no-leak reference, PSNR, SSIM, ST-LPIPS, re-identification, the run folder with its images and plot).

Printed: the median whole-process seconds of each (and of ``python -c "import torch"``), the ratio
fedinvert / plain, and each one's fixed cost, two ways: the whole process at ``--steps`` minus ``--steps`` times
the marginal cost of a step (the difference between a ``--steps`` run and a ``--steps + --extra`` run, over
``--extra``), less the bare ``import torch`` process; and directly, a 1-step run less one step and the import.
fedinvert's command line imports torch with Python's garbage collector paused and then freezes what the imports
created (`fedinvert.cli._preload`), which saves the collector's passes over torch's objects; its fixed cost is
therefore also given beyond a process that imports torch the same way.

    python benchmarks/process.py --threads 1            # 300 steps, 5 repeats: about 2 min here
    python benchmarks/process.py --steps 300 --extra 1000 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAUSED = "import torch, collector paused"


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="attack steps (default 300)")
    parser.add_argument("--extra", type=int, default=1000, help="extra steps of the marginal-cost runs (1000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command, interleaved (5)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads of every process (1)")
    parser.add_argument("--index", type=int, default=0, help="which photo (0)")
    args = parser.parse_args()

    from fedinvert.data import load_batch

    work = Path(tempfile.mkdtemp(prefix="fedinvert_process_"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPYCACHEPREFIX": str(work / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # byte-compiled modules, as an installed package has them
    image = work / "photo.png"
    batch = load_batch("photos", batch_size=1, indices=[args.index], image_size=32, channels=3, num_classes=10)
    from PIL import Image

    pixels = (batch.images[0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype("uint8")
    Image.fromarray(pixels).save(image)

    def fedinvert(steps: int, k: int) -> list[str]:
        return [sys.executable, "-m", "fedinvert", "attack", "attack=inverting_gradients", "model=lenet-dlg",
                "dataset=photos", "image_size=32", "batch_size=1", f"dataset.indices=[{args.index}]",
                f"attack.iterations={steps}", "progress=false", f"out={work / f'run-{steps}-{k}'}"]

    def bare(steps: int, k: int) -> list[str]:
        return [sys.executable, str(HERE / "bare_process.py"), str(image), str(steps), str(work / f"bare-{steps}-{k}.png")]

    commands = {
        "python -c 'import torch'": lambda k: [sys.executable, "-c", "import torch"],
        PAUSED: lambda k: [sys.executable, "-c", "import gc; gc.disable(); import torch; gc.freeze(); gc.enable()"],
        "plain script": lambda k: bare(args.steps, k),
        "fedinvert attack": lambda k: fedinvert(args.steps, k),
        "plain script (+extra)": lambda k: bare(args.steps + args.extra, k),
        "fedinvert attack (+extra)": lambda k: fedinvert(args.steps + args.extra, k),
        "plain script (1 step)": lambda k: bare(1, k),
        "fedinvert attack (1 step)": lambda k: fedinvert(1, k),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    timed(fedinvert(5, -1), env)  # warm the file caches (and fedinvert's ST-LPIPS weights) before timing
    timed(bare(5, -1), env)  # and write both programs' byte code
    for k in range(args.repeats):
        for name, make in commands.items():
            times[name].append(timed(make(k), env))
    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["python -c 'import torch'"]
    print(f"{args.steps} steps (+{args.extra} for the marginal cost), {args.repeats} interleaved runs each,"
          f" {args.threads} thread(s); median seconds of the whole process")
    print(f"  {'process':28s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for name, values in times.items():
        print(f"  {name:28s} {median[name]:9.2f} {min(values):7.2f} {max(values):7.2f}")
    def marginal_of(who: str) -> float:
        return (median[f"{who} (+extra)"] - median[who]) / args.extra

    for who in ("plain script", "fedinvert attack"):
        marginal = marginal_of(who)
        fixed = median[who] - args.steps * marginal - base
        print(f"  {who}: {1000 * marginal:.2f} ms a step (marginal), fixed cost beyond import torch {fixed:.2f} s")
    marginal = (median["fedinvert attack (+extra)"] - median["fedinvert attack"]) / args.extra
    fixed = median["fedinvert attack"] - args.steps * marginal - median[PAUSED]
    print(f"  fedinvert attack: fixed cost beyond import torch with the collector paused, as fedinvert imports it:"
          f" {fixed:.2f} s")
    for who, against in (("plain script", base), ("fedinvert attack", median[PAUSED])):
        one = median[f"{who} (1 step)"] - marginal_of(who) - against
        print(f"  {who}: a 1-step run less its step and the matching import torch: {one:.2f} s")
    print(f"  ratio fedinvert / plain at {args.steps} steps: {median['fedinvert attack'] / median['plain script']:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
