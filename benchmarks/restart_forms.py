"""The forms of Inverting Gradients' step with several restarts, side by side on one victim.

`attack.compile=auto` runs several restarts looped, vmapped or grouped, whichever a probe finds fastest
eagerly, and a compiled step follows the eager choice (`fedinvert.attacks.compilation`). This script shows
whether the compiled forms keep the eager forms' order: ms a step (after the first call, which compiles or, for
the grouped form, checks itself against the looped step) of the compiled single chain (R = 1), the compiled
vmapped step, the compiled chain called once per restart, and the three eager forms at R restarts, beside the
eager step of one restart; B = 1, 32 px.

    OMP_NUM_THREADS=1 python benchmarks/restart_forms.py --threads 1 lenet-dlg convnet resnet18
"""

from __future__ import annotations

import argparse
import time

import torch
from speed import victim

from fedinvert.attacks import ATTACKS

STEPS = {"lenet-dlg": 300, "convnet": 60, "resnet18": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("victims", nargs="+")
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eager-only", action="store_true", help="only the uncompiled forms")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.victims:
        _, obs, _, labels = victim(name, 1)
        attack = ATTACKS.build("inverting_gradients", iterations=10, restarts=args.restarts, device="cpu")
        n = STEPS.get(name, 20)
        print(f"{name}, {n} timed steps a form")
        r = args.restarts
        forms = (("compiled", 1), ("compiled", r), ("compiled_loop", r), ("eager", 1), ("eager", r), ("vmap", r),
                 ("grouped", r))
        for form, restarts in forms if not args.eager_only else [f for f in forms if "compiled" not in f[0]]:
            matcher = attack.make_matcher(obs, labels, form=form)
            variables = [torch.randn(restarts, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))]
            start = time.perf_counter()
            matcher.step(variables)
            first = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(n):
                matcher.step(variables)
            ms = 1e3 * (time.perf_counter() - start) / n
            print(f"  {form:14s} R={restarts}: {ms:9.2f} ms a step (first call {first:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
