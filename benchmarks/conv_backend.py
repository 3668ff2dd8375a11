"""The eager Inverting Gradients step with oneDNN convolutions (PyTorch's CPU default) and without.

PyTorch runs CPU convolutions through oneDNN unless ``torch.backends.mkldnn.enabled`` is False, when its own
kernels run. For each victim and batch size this prints the ms of one eager step (one restart, 32 px) under
both settings, twice, alternating, after a warm-up step each.

    cd benchmarks && OMP_NUM_THREADS=1 python conv_backend.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from speed import victim

from fedinvert.attacks import ATTACKS

CASES = (("lenet-dlg", 1, 300), ("lenet-dlg", 8, 100), ("convnet", 1, 40), ("convnet", 8, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'victim':<10} {'B':>2}  oneDNN ms a step   own kernels ms a step")
    for name, batch, steps in CASES:
        _, obs, _, labels = victim(name, batch)
        matcher = ATTACKS.build("inverting_gradients", iterations=10, device="cpu").make_matcher(obs, labels)
        variables = [torch.rand(1, batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))]
        timings: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(2):
            for enabled in (True, False):
                torch.backends.mkldnn.enabled = enabled
                matcher.step(variables)
                start = time.perf_counter()
                for _ in range(steps):
                    matcher.step(variables)
                timings[enabled].append(1e3 * (time.perf_counter() - start) / steps)
        torch.backends.mkldnn.enabled = True
        print(f"{name:<10} {batch:>2}  {' '.join(f'{t:7.2f}' for t in timings[True])}   "
              f"{' '.join(f'{t:7.2f}' for t in timings[False])}", flush=True)


if __name__ == "__main__":
    main()
