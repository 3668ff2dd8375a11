"""Test helpers that watch what an attack asks of the device: host reads, tensors made from Python data, dtypes.

`Probe` is a `TorchDispatchMode`: every ATen operation passes through it, whatever the device. On CUDA a host
read of a tensor (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()`` of a scalar) is ``_local_scalar_dense``
and waits for the device; a tensor made from Python data (``torch.tensor(list)``) is ``lift_fresh`` and is a
host-to-device copy. Counting them on the CPU therefore finds the code that would sync on a GPU. Reads made by
``torch.optim`` are left out: Adam keeps its step counter on the host by design, and reading it costs nothing.
"""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_READS = ("_local_scalar_dense",)
FROM_PYTHON = ("lift_fresh", "lift_fresh_copy")


def _asker() -> str | None:
    """file:line of the code that asked for the current operation: the innermost frame outside this module and
    outside torch; None when that code is ``torch.optim`` (whose reads are left out, see above)."""
    for frame in reversed(traceback.extract_stack()):
        name = frame.filename.replace("\\", "/")
        if name == __file__ or name.endswith("/device_probe.py"):
            continue
        if "/torch/optim/" in name:
            return None
        if "/torch/" in name:
            continue
        return f"{name.rsplit('/', 2)[-2]}/{name.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


class Probe(TorchDispatchMode):
    """Counts host reads and tensors from Python data per calling line, and the dtypes and devices of results."""

    def __init__(self) -> None:
        super().__init__()
        self.host_reads: Counter[str] = Counter()
        self.from_python: Counter[str] = Counter()
        self.results: set[tuple[str, torch.dtype, str]] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in HOST_READS or name in FROM_PYTHON:
            asker = _asker()
            if asker is not None:
                (self.host_reads if name in HOST_READS else self.from_python)[asker] += 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.results.add((name, t.dtype, t.device.type))
        return out

    def float64_on(self, device_type: str) -> set[str]:
        """Names of the operations that produced a float64 tensor on ``device_type``."""
        return {name for name, dtype, dev in self.results if dtype == torch.float64 and dev == device_type}
