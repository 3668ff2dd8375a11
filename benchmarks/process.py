"""Whole-process time of a short Inverting Gradients run: ``fedinvert attack`` against a plain PyTorch script.

Both are started as fresh processes, interleaved, ``--repeats`` times each, and timed from the outside (wall
clock of the whole process: interpreter start, imports, data, victim, the steps, evaluation, writing). The plain
script (`bare_process.py`, beside this file) imports torch and PIL, reads one photo (written here once as a PNG
by fedinvert's ``photos`` loader, so both see the same pixels), builds DLG's sigmoid LeNet, computes the true
gradient and runs the plain loop (Adam lr 0.1, 1 − cosine + 1e-4 · TV, clamp) for ``--steps`` steps, then
writes the image as a PNG. fedinvert runs ``attack=inverting_gradients model=lenet-dlg dataset=photos
image_size=32 batch_size=1 attack.iterations=N`` with everything it does by default (label inference, the
no-leak reference, PSNR, SSIM, ST-LPIPS, re-identification, the run folder with its images and plot).
With ``--attack gifd`` the plain script is `bare_process_gifd.py` (the face DCGAN from the gan-face-generate wheel,
its five stages with ``--steps`` steps each) and fedinvert runs ``attack=gifd prior=face-dcgan attack.restarts=1
attack.steps_per_stage=N``; marginal costs are then per evaluation (one step of one stage).

Printed: the median whole-process seconds of each (and of ``python -c "import torch"``), the ratio
fedinvert / plain, and each one's fixed cost, two ways: the whole process at ``--steps`` minus ``--steps`` times
the marginal cost of a step (the difference between a ``--steps`` run and a ``--steps + --extra`` run, over
``--extra``), less the bare ``import torch`` process; and directly, a 1-step run less one step and the import.
fedinvert's command line imports torch with Python's garbage collector paused and then freezes what the imports
created (`fedinvert.cli._preload`), which saves the collector's passes over torch's objects; its fixed cost is
therefore also given beyond a process that imports torch the same way. The command line also ends without the
interpreter's teardown of its modules (`fedinvert.cli.exit_now`), which a plain script pays (about 0.1 s after
importing torch); so the fixed cost is given a third way, beyond a paused import that ends the same way: the work
fedinvert itself adds.

    python benchmarks/process.py --threads 1            # 300 steps, 5 repeats: about 2 min here
    python benchmarks/process.py --steps 300 --extra 1000 --repeats 7
    python benchmarks/process.py --threads 1 --attack gifd   # GIFD: 60 steps a stage, 5 stages
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
PAUSED_EXIT = "the same, no teardown"


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", choices=("inverting_gradients", "gifd"), default="inverting_gradients",
                        help="inverting_gradients (default) or gifd (face-dcgan prior, one restart)")
    parser.add_argument("--steps", type=int, default=None,
                        help="attack steps; steps a stage for gifd (default 300; gifd 60, 5 stages: 300 steps)")
    parser.add_argument("--extra", type=int, default=None,
                        help="extra steps (a stage) of the marginal-cost runs (1000; gifd 200)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command, interleaved (5)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads of every process (1)")
    parser.add_argument("--index", type=int, default=0, help="which photo (0)")
    args = parser.parse_args()
    gifd = args.attack == "gifd"
    stages = 5 if gifd else 1  # a gifd "step" is one step of each of face-dcgan's five stages
    if args.steps is None:
        args.steps = 60 if gifd else 300
    if args.extra is None:
        args.extra = 200 if gifd else 1000

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

    budget = ["attack=gifd", "prior=face-dcgan", "attack.restarts=1", "attack.steps_per_stage={}"] if gifd else [
        "attack=inverting_gradients", "attack.iterations={}"]
    script = HERE / ("bare_process_gifd.py" if gifd else "bare_process.py")

    def fedinvert(steps: int, k: int) -> list[str]:
        return [sys.executable, "-m", "fedinvert", "attack", *(b.format(steps) for b in budget), "model=lenet-dlg",
                "dataset=photos", "image_size=32", "batch_size=1", f"dataset.indices=[{args.index}]",
                "progress=false", f"out={work / f'run-{steps}-{k}'}"]

    def bare(steps: int, k: int) -> list[str]:
        return [sys.executable, str(script), str(image), str(steps), str(work / f"bare-{steps}-{k}.png")]

    commands = {
        "python -c 'import torch'": lambda k: [sys.executable, "-c", "import torch"],
        PAUSED: lambda k: [sys.executable, "-c", "import gc; gc.disable(); import torch; gc.freeze(); gc.enable()"],
        PAUSED_EXIT: lambda k: [sys.executable, "-c", "import gc, os; gc.disable(); import torch; gc.freeze();"
                                " gc.enable(); os._exit(0)"],
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
    what = f"GIFD, {args.steps} steps a stage, 5 stages" if gifd else f"Inverting Gradients, {args.steps} steps"
    print(f"{what} (+{args.extra} for the marginal cost), {args.repeats} interleaved runs each,"
          f" {args.threads} thread(s); median seconds of the whole process")
    print(f"  {'process':28s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for name, values in times.items():
        print(f"  {name:28s} {median[name]:9.2f} {min(values):7.2f} {max(values):7.2f}")
    steps = args.steps * stages  # evaluations of a run; "a step" below is one evaluation

    def marginal_of(who: str) -> float:
        return (median[f"{who} (+extra)"] - median[who]) / (args.extra * stages)

    for who in ("plain script", "fedinvert attack"):
        marginal = marginal_of(who)
        fixed = median[who] - steps * marginal - base
        print(f"  {who}: {1000 * marginal:.2f} ms a step (marginal), fixed cost beyond import torch {fixed:.2f} s")
    marginal = marginal_of("fedinvert attack")
    fixed = median["fedinvert attack"] - steps * marginal - median[PAUSED]
    print(f"  fedinvert attack: fixed cost beyond import torch with the collector paused, as fedinvert imports it:"
          f" {fixed:.2f} s")
    for who, against in (("plain script", base), ("fedinvert attack", median[PAUSED])):
        one = median[f"{who} (1 step)"] - stages * marginal_of(who) - against
        print(f"  {who}: a 1-step run less its step and the matching import torch: {one:.2f} s")
    # the command line ends without the interpreter's teardown (fedinvert.cli.exit_now): beyond an import that
    # skips it too, what fedinvert's own work adds
    fixed = median["fedinvert attack"] - steps * marginal - median[PAUSED_EXIT]
    one = median["fedinvert attack (1 step)"] - stages * marginal - median[PAUSED_EXIT]
    print(f"  fedinvert attack: fixed cost beyond the paused import without its teardown: {fixed:.2f} s"
          f" ({steps}-step run), {one:.2f} s (1-step run)")
    print(f"  ratio fedinvert / plain at {steps} steps: {median['fedinvert attack'] / median['plain script']:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
