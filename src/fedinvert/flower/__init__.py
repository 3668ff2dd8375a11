"""Flower integration (extra ``[flower]``: ``pip install 'fedinvert[flower]'``).

- `CapturingStrategy`: wraps any Message-API strategy and saves every client's update as an observation.
- `verify_mod`, `leakage_mod`: client mods that refuse a suspicious model and estimate their own leakage.
- `LocalGrid`, `run_local`: a real Flower federation in one process, without Ray.

Flower's telemetry is read when ``flwr`` is first imported; unless the environment already says otherwise,
this package switches it off (``FLWR_TELEMETRY_ENABLED=0``) before that import.
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

try:
    import flwr  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("fedinvert.flower needs Flower: pip install 'fedinvert[flower]'") from err

from fedinvert.flower.capture import CapturingStrategy, attach_private, read_capture
from fedinvert.flower.local import LocalGrid, run_local
from fedinvert.flower.mods import leakage_mod, verify_mod

__all__ = ["CapturingStrategy", "LocalGrid", "attach_private", "leakage_mod", "read_capture", "run_local", "verify_mod"]
