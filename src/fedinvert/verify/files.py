"""Reading a received model from disk: safetensors only, never a pickle (``torch.load``) of an untrusted file."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import Tensor

from fedinvert.errors import CheckpointError, DataNotFoundError


def read_state(path: str | Path) -> dict[str, Tensor]:
    """All tensors of the safetensors file ``path`` (a state dict such as a run's ``sent_model.safetensors``).

    Raises:
        DataNotFoundError: ``path`` does not exist or is a folder.
        CheckpointError: the file is not a readable safetensors file (corrupt, truncated, a pickle, empty).
    """
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"{path}: no such file")
    if path.is_dir():
        hint = " (the run's file is sent_model.safetensors inside it)" if (path / "sent_model.safetensors").exists() else ""
        raise DataNotFoundError(f"{path} is a folder, not a safetensors file{hint}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a mapping
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is not a safetensors state dict ({reason})") from None
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    return state
