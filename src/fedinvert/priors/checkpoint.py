"""Safe loading of generator weights: strict keys, no arbitrary unpickling.

Files are read either with safetensors or with ``torch.load(..., weights_only=True)``, which refuses every
pickled object that is not a tensor or a plain container. A checkpoint that needs more (for example a training
checkpoint that also pickles an ``argparse.Namespace``) is refused with a one-line `CheckpointError` that says how
to re-save its tensors in an environment the user trusts.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from fedinvert.errors import CheckpointError, DataNotFoundError

PathLike = str | os.PathLike[str]

# What torch.load(weights_only=True) raises for files that are not torch checkpoints: the pickle reader and the
# zip reader fail in different ways (invalid opcodes, truncated archives, text files, empty files).
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, OSError)


def read_state_dict(path: PathLike, *, what: str, containers: Sequence[str] = ()) -> dict[str, Tensor]:
    """Read a state dict (parameter name -> tensor) from a local file, safely.

    Args:
        path: a ``.safetensors`` file, or a torch file (``.pt``, ``.pth``, ``.bin``, ``.tar``) that
            ``torch.load(weights_only=True)`` can read.
        what: what the file should hold, for messages (e.g. ``"face-dcgan weights"``).
        containers: keys under which a checkpoint may nest the state dict, tried in order (e.g.
            ``("g_ema",)`` for rosinality StyleGAN2 checkpoints, ``("netG_state_dict",)`` for the face DCGAN).

    Returns:
        The tensors on the CPU, in the file's dtype.

    Raises:
        DataNotFoundError: there is no file at ``path``.
        CheckpointError: the file is corrupt, is not a checkpoint, needs unsafe unpickling, or holds no state dict.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataNotFoundError(f"{what}: no file at {file}")
    if file.suffix == ".safetensors":
        try:
            obj: object = load_safetensors(str(file), device="cpu")
        except SafetensorError as exc:
            raise CheckpointError(f"{what}: {file} is not a valid safetensors file ({exc})") from None
    else:
        obj = _torch_load(file, what=what)
    return _select_state_dict(obj, file=file, what=what, containers=containers)


def _torch_load(file: Path, *, what: str) -> object:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if unsafe:
            raise CheckpointError(
                f"{what}: {file} pickles a {unsafe.group(1)} object and could only be read with unsafe"
                " unpickling, which fedinvert refuses; in an environment you trust, re-save its tensors only"
                " (torch.save(state_dict, 'weights.pt') or safetensors) and pass that file"
            ) from None
        raise CheckpointError(f"{what}: {file} is corrupt or not a torch checkpoint") from None
    except _UNREADABLE as exc:
        raise CheckpointError(
            f"{what}: {file} is corrupt or not a torch checkpoint ({type(exc).__name__})"
        ) from None


def _select_state_dict(obj: object, *, file: Path, what: str, containers: Sequence[str]) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in containers:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        hint = f" (looked for {', '.join(repr(c) for c in containers)})" if containers else ""
        raise CheckpointError(f"{what}: {file} holds no state dict{hint}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{what}: {file} is not a state dict; entry {bad[0]!r} is not a named tensor")
    return dict(obj)


def load_strict(module: nn.Module, state: Mapping[str, Tensor], *, what: str, source: str) -> None:
    """Load ``state`` into ``module`` with exactly matching names and shapes and finite values.

    Args:
        module: the architecture.
        state: parameter/buffer name -> tensor.
        what: the architecture's name for messages, with its configuration (e.g. ``"biggan (resolution 256)"``).
        source: where ``state`` came from (a path), for messages.

    Raises:
        CheckpointError: one line naming the first missing, unexpected or mis-shaped key and how many there are,
            or the first tensor holding NaN/inf.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k!r} is {tuple(state[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), first {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), first {wrong[0]}")
    if problems:
        raise CheckpointError(f"{source} does not match the {what} architecture: {'; '.join(problems)}")
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source} is corrupt: {key!r} holds NaN or inf")
    module.load_state_dict(dict(state), strict=True)
