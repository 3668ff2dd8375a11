"""fedinvert's on-disk cache: ``$FEDINVERT_CACHE`` (default ``~/.cache/fedinvert``).

Trained victims (``victims/``), trained inversion models (``lti/``) and decoded photo crops (``photos/``) live
there. Every entry is derived from files and settings named in its key, so deleting the folder only costs the
time to rebuild what is needed.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$FEDINVERT_CACHE``, else ``~/.cache/fedinvert``."""
    return Path(os.environ.get("FEDINVERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fedinvert"))
