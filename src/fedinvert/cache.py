"""fedinvert's on-disk cache: ``$FEDINVERT_CACHE`` (default ``~/.cache/fedinvert``).

Trained victims (``victims/``), trained inversion models (``lti/``), decoded photo crops (``photos/``) and
safetensors copies of perceptual weight files (``perceptual/``) live there. Every entry is derived from files and settings named in its key, so deleting the folder only costs the
time to rebuild what is needed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def cache_root() -> Path:
    """``$FEDINVERT_CACHE``, else ``~/.cache/fedinvert``."""
    return Path(os.environ.get("FEDINVERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fedinvert"))


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (contiguous) as a safetensors file at ``path``, creating its folder: into a temporary
    file beside it, then renamed, so a reader never sees half an entry; the temporary file is removed when the
    write fails, and the error raised."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}-", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
