"""What compiling an attack's step costs, cold and warm, against the eager step it replaces.

For each case a fresh ``fedinvert attack`` process runs with ``attack.compile=true`` twice on one new, empty
inductor cache (``TORCHINDUCTOR_CACHE_DIR``): the first compiles cold, the second finds the cache warm (as a
user's second run of the same victim does). A third process runs eager (``attack.compile=false``). Printed per
case: the victim's and the prior's parameter tensors (the size `fedinvert.attacks.compilation` scales its
cold estimate by), cold and warm compile seconds (``compile_seconds`` in metrics.json), and the eager and
compiled seconds a step (the attack's seconds over its steps, compilation excluded).

These numbers are the measured model behind ``attack.compile=auto`` (`fedinvert.attacks.compilation`).

    OMP_NUM_THREADS=1 python benchmarks/compile_cost.py --threads 1     # about 15 min here
    python benchmarks/compile_cost.py --cases ig-lenet-dlg,ig-resnet18 --steps 400
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _tables import write_csv

CASES: dict[str, list[str]] = {
    "ig-lenet-dlg": ["attack=inverting_gradients", "model=lenet-dlg", "dataset=photos", "image_size=32"],
    "ig-convnet": ["attack=inverting_gradients", "model=convnet", "dataset=photos", "image_size=32"],
    "ig-resnet18": ["attack=inverting_gradients", "model=resnet18", "dataset=photos", "image_size=32"],
    "gifd-fashion-lenet": ["attack=gifd", "prior=fashion", "model=lenet-dlg", "dataset=fashion-mnist",
                           "image_size=32"],
}


def run(case: str, steps: int, compile: bool, cache: Path, out: Path, threads: int) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(threads)}
    budget = [f"attack.iterations={steps}"] if case.startswith("ig-") else [f"attack.steps_per_stage={steps}"]
    command = [sys.executable, "-m", "fedinvert", "attack", *CASES[case], "batch_size=1", *budget,
               f"attack.compile={'true' if compile else 'false'}", "progress=false", f"out={out}"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-800:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / "run.json").read_text())
    return {"process_s": time.perf_counter() - start, "metrics": metrics, "info": info}


def sizes(case: str) -> tuple[int, int]:
    """(victim parameter tensors, prior parameter tensors) of a case, as the cold estimate counts them."""
    from fedinvert.attacks.compilation import parameter_tensors
    from fedinvert.models import build_model

    args = dict(a.split("=", 1) for a in CASES[case])
    channels = 1 if args["dataset"] == "fashion-mnist" else 3
    model = build_model(args["model"], in_channels=channels, num_classes=10, image_size=32, seed=0)
    prior = 0
    if args["attack"] != "inverting_gradients":
        from fedinvert.priors import build_prior

        prior = parameter_tensors(build_prior(args["prior"]))
    return parameter_tensors(model), prior


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--steps", type=int, default=200, help="steps (IG) or steps a stage (GIFD); 200")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", default="benchmarks/results/compile_cost.csv")
    args = parser.parse_args()
    rows = []
    print(f"{'case':<20} {'victim':>6} {'prior':>6} {'cold s':>7} {'warm s':>7} {'eager ms':>9} {'compiled ms':>11}"
          f" {'ratio':>6}")
    for case in args.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; known: {', '.join(CASES)}")
        work = Path(tempfile.mkdtemp(prefix="fedinvert_compile_"))
        try:
            cold = run(case, args.steps, True, work / "inductor", work / "cold", args.threads)
            warm = run(case, args.steps, True, work / "inductor", work / "warm", args.threads)
            eager = run(case, args.steps, False, work / "inductor", work / "eager", args.threads)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        steps = cold["metrics"]["iterations"]
        victim, prior = sizes(case)
        row = {
            "case": case, "victim_tensors": victim, "prior_tensors": prior, "evaluations": steps,
            "cold_compile_s": cold["metrics"]["compile_seconds"], "warm_compile_s": warm["metrics"]["compile_seconds"],
            "eager_ms": 1e3 * eager["metrics"]["seconds"] / steps,
            "compiled_ms": 1e3 * warm["metrics"]["seconds"] / steps,
        }
        row["compiled_over_eager"] = row["compiled_ms"] / row["eager_ms"]
        rows.append(row)
        print(f"{case:<20} {victim:>6} {prior:>6} {row['cold_compile_s']:>7.1f} {row['warm_compile_s']:>7.1f}"
              f" {row['eager_ms']:>9.2f} {row['compiled_ms']:>11.2f} {row['compiled_over_eager']:>6.2f}", flush=True)
    print(f"wrote {write_csv(rows, args.csv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
