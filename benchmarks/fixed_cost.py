"""Where a short ``fedinvert attack`` spends its time outside its steps, phase by phase, in fresh processes.

Each repeat starts a new interpreter that imports torch and fedinvert as the command line does
(`fedinvert.cli._preload`: collector paused, then frozen), times each import, then runs ``fedinvert attack``
for Inverting Gradients on DLG's LeNet (the photo, 32 px, B = 1, as `process.py`) with the runner's phases
wrapped in timers: resolving the configuration, building the scenario, the attack, evaluation and writing
the run folder. The run has one step by default, so the attack's wall time is its fixed part (the compile
probe, label inference, building the matcher) plus that step; the step calls the search makes are timed and
taken off. Printed: the median of each phase over ``--repeats`` processes, in milliseconds.

    cd benchmarks && OMP_NUM_THREADS=1 python fixed_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import gc, json, os, sys, time
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
T = {}
gc.disable()
t = time.perf_counter(); import torch; T["import torch"] = time.perf_counter() - t
t = time.perf_counter(); import fedinvert.cli as cli; T["import fedinvert.cli"] = time.perf_counter() - t
t = time.perf_counter(); import fedinvert.config as config; T["import fedinvert.config"] = time.perf_counter() - t
t = time.perf_counter(); import fedinvert.runner as runner; T["import fedinvert.runner"] = time.perf_counter() - t
gc.freeze(); gc.enable()


def timed(module, name, label):
    inner = getattr(module, name)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            T[label] = T.get(label, 0.0) + time.perf_counter() - start
    setattr(module, name, wrapper)

timed(config, "resolve_config", "resolve the configuration")
# the step calls of the search itself (not the compile probe's), whose sum the attack's wall less is its fixed part
from fedinvert.attacks.optimization.inverting_gradients import InvertingGradients as IG
searching = []
inner_make_step, inner_search = IG.make_step, IG._search
def make_step(self, matcher, x0):
    step = inner_make_step(self, matcher, x0)
    def timed_step(*args, **kwargs):
        start = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            if searching:
                T["the search's steps"] = T.get("the search's steps", 0.0) + time.perf_counter() - start
    return timed_step
def search(self, *args, **kwargs):
    searching.append(True)
    try:
        return inner_search(self, *args, **kwargs)
    finally:
        searching.clear()
IG.make_step, IG._search = make_step, search
timed(runner, "build_scenario", "scenario (data, victim, true gradient)")
timed(runner, "_evaluate_or_record", "evaluation")
timed(runner, "write_run_folder", "write the run folder")
out, iterations = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
cli.main(["attack", "attack=inverting_gradients", "model=lenet-dlg", "dataset=photos", "image_size=32",
          "batch_size=1", "dataset.indices=[0]", f"attack.iterations={iterations}", "progress=false", f"out={out}"])
T["main (all of the command)"] = time.perf_counter() - t
run = json.load(open(os.path.join(out, "run.json")))
T["attack (wall)"] = run["timings"]["attack_seconds"]
print(json.dumps(T))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=1, help="attack steps (1: the attack's wall is its fixed part)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="fedinvert_fixed_")
    env = {**os.environ, "PYTHONPYCACHEPREFIX": os.path.join(work, "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # byte-compiled, as an installed package
    rows: list[dict[str, float]] = []
    for k in range(args.repeats + 1):  # the first writes the byte code and warms the file caches: not counted
        done = subprocess.run([sys.executable, "-c", CHILD, os.path.join(work, f"run{k}"), str(args.iterations)],
                              env=env, capture_output=True, text=True, check=True)
        if k:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = {key: 1000 * statistics.median(r[key] for r in rows) for key in rows[0]}
    steps = median.pop("the search's steps")
    attack_fixed = median["attack (wall)"] - steps
    print(f"{args.iterations} IG step(s) on lenet-dlg, B = 1, 32 px; median ms of {args.repeats} fresh processes")
    for key, value in median.items():
        print(f"  {key:40s} {value:8.1f}")
    print(f"  {'attack beyond its steps (wall − step calls)':40s} {attack_fixed:8.1f}"
          f"  ({args.iterations} step(s): {steps:.2f} ms)")
    outside = (median["import fedinvert.cli"] + median["import fedinvert.config"] + median["import fedinvert.runner"]
               + median["main (all of the command)"] - median["attack (wall)"] + attack_fixed)
    print(f"  {'outside the steps, after import torch':40s} {outside:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
