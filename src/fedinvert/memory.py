"""How much memory a run needs, and how much this machine has: checked before anything large is allocated.

The estimate is a lower bound, so a run that fits is never refused: the victim's activations (which depend on
the architecture) are left out, and only the copies every attack holds are counted, with the factors below.
A run of ``image_size=100000`` or a label space of 10⁸ classes is refused at once, with the numbers, instead
of dying in the allocator.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fedinvert.errors import ConfigError

FLOAT_BYTES = 4
"""float32, the dtype of the private batch, the victim and the attack's working tensors."""

IMAGE_COPIES = 8
"""Copies of the (B, C, H, W) batch a run holds at once: the private images and their normalised copy, the
attack's dummy, its gradient and two optimiser moments, with margin for the first layer's inputs."""

PARAMETER_COPIES = 4
"""Copies of the victim's parameters: the weights, the client's update, the dummy update the attack matches
and its gradient (double back-propagation)."""


def _proc_meminfo() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, or None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate: ``MemAvailable`` of /proc/meminfo on Linux (the figure
    psutil reports there, read without its 10 ms import), else psutil's ``available`` if psutil is installed,
    else the free physical pages from ``os.sysconf``; capped by a cgroup memory limit when one applies. None
    when the machine does not say."""
    found = _proc_meminfo()
    if found is None:
        try:
            import psutil  # type: ignore[import-untyped]

            found = int(psutil.virtual_memory().available)
        except ImportError:
            found = _sysconf()
    headroom = _cgroup_headroom()
    if headroom is not None:
        found = headroom if found is None else min(found, headroom)
    return found


def format_bytes(count: float) -> str:
    """``count`` bytes as a short human-readable size (binary units), e.g. ``'1.5 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def parameter_count(model_name: str, **options: Any) -> int:
    """Parameters and buffers of the victim ``model_name`` built with ``options`` (the `build_model`
    keywords), counted on the meta device, so nothing is allocated however large it is."""
    from fedinvert.models import build_model

    with torch.device("meta"):
        model = build_model(model_name, **options)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def check_memory(*, images: int, channels: int, height: int, width: int, parameters: int = 0) -> int:
    """Refuse a run whose lower-bound estimate exceeds `available_memory`; return the estimate in bytes.

    The estimate is ``images × channels × height × width × FLOAT_BYTES × IMAGE_COPIES`` plus
    ``parameters × FLOAT_BYTES × PARAMETER_COPIES``.

    Raises:
        ConfigError: one line with the estimate, how it was made, and the available memory.
    """
    pixels = images * channels * height * width
    needed = pixels * FLOAT_BYTES * IMAGE_COPIES + parameters * FLOAT_BYTES * PARAMETER_COPIES
    available = available_memory()
    if available is not None and needed > available:
        detail = f"batch {images}×{channels}×{height}×{width} float32 × {IMAGE_COPIES} copies"
        if parameters:
            detail += f" + {parameters:,} victim parameters × {PARAMETER_COPIES} copies"
        raise ConfigError(
            f"this run needs at least {format_bytes(needed)} of memory ({detail}), but this machine has"
            f" {format_bytes(available)} available; lower image_size, batch_size or num_classes"
        )
    return needed
