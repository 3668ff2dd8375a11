"""The run folder's safe writing: checked and reserved before any work, written whole or not at all.

A run writes into a temporary sibling ``.NAME.tmp-PID`` of its folder ``NAME`` and renames it into place when
every file is written (DESIGN §12). `prepare` checks the target and creates that sibling before the attack
starts, so a read-only or immutable place, a path through a file or a folder that must not be replaced fails
at once, as one line. ``overwrite=true`` replaces only a fedinvert run folder (one holding ``run.json`` and
nothing a run does not write): a user's file is never deleted. Siblings left by a run that was killed are
cleaned up the next time the same target is prepared.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedinvert.errors import ConfigError

log = logging.getLogger(__name__)

#: Every file a run folder may hold; a folder with anything else is not replaced.
RUN_FILES = frozenset({
    "config.yaml", "run.json", "metrics.json", "history.json", "tensors.safetensors", "observation.safetensors",
    "reconstruction.png", "stages.png", "loss.png", "sent_model.safetensors",
})


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def _listing(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise ConfigError(f"out={folder}: cannot read the folder ({_reason(err)})") from None


def _holds_only_run_files(folder: Path) -> bool:
    """Whether ``folder`` is a folder whose entries are all plain files a run writes (or it is empty)."""
    try:
        return folder.is_dir() and not folder.is_symlink() and all(
            p.name in RUN_FILES and p.is_file() and not p.is_symlink() for p in folder.iterdir()
        )
    except OSError:
        return False


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs; True when that cannot be told (so its files are left alone)."""
    try:
        import psutil  # type: ignore[import-untyped, import-not-found, unused-ignore]

        return bool(psutil.pid_exists(pid))
    except ImportError:
        pass
    if os.name != "posix":  # os.kill would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def check_target(path: Path, *, overwrite: bool, shown: str) -> None:
    """Refuse ``path`` as a run folder unless it is absent, empty, or (with ``overwrite``) a run folder.

    ``shown`` is how the message names it (the ``out=`` the user gave).
    """
    if path.is_symlink():
        raise ConfigError(f"out={shown} is a symbolic link; give the folder it points to, or another out=")
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"out={shown} is a file, not a folder; choose another out=")
    entries = _listing(path)
    if not entries:
        return
    if not overwrite:
        raise ConfigError(f"output folder {shown} exists and is not empty; choose another out= or set overwrite=true")
    if "run.json" not in entries:
        raise ConfigError(
            f"out={shown} is not a fedinvert run folder (it has no run.json) and overwrite=true replaces only run"
            " folders; choose another out="
        )
    foreign = [name for name in entries if name not in RUN_FILES or not (path / name).is_file()]
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(
            f"run folder {shown} holds files a run never writes ({listed}); overwrite=true would delete them:"
            " move them away or choose another out="
        )


def clean_stale(path: Path) -> None:
    """Remove the temporary siblings of ``path`` that a killed run left (``.NAME.tmp-PID`` of a process that
    no longer runs); a ``.NAME.old-PID`` (a replaced run whose successor was never renamed into place) is
    put back as ``path`` when ``path`` is missing, else removed. Only folders holding nothing but run files
    are touched."""
    prefix = f".{path.name}."
    siblings = sorted(path.parent.glob(glob.escape(prefix) + "tmp-*")) + sorted(
        path.parent.glob(glob.escape(prefix) + "old-*")
    )
    for sibling in siblings:
        pid_text = sibling.name.rsplit("-", 1)[-1]
        if not pid_text.isdigit() or not _holds_only_run_files(sibling):
            continue
        pid = int(pid_text)
        if pid != os.getpid() and _process_alive(pid):
            continue  # another run is writing this target right now
        try:
            if ".old-" in sibling.name and not path.exists() and not path.is_symlink():
                sibling.rename(path)
                log.warning("put back the run folder %s that an interrupted overwrite had moved aside", path)
            else:
                shutil.rmtree(sibling)
                log.info("removed %s, left by an interrupted run", sibling)
        except OSError as err:
            log.warning("cannot clean up %s (%s)", sibling, _reason(err))


@dataclass
class OutputTarget:
    """A checked run folder and its reserved temporary sibling.

    Attributes:
        out: the folder as the user gave it (relative paths stay relative).
        path: ``out`` made absolute.
        tmp: the temporary sibling ``.NAME.tmp-PID``, created empty.
        overwrite: whether an existing run folder may be replaced.
        created: the parent folders `prepare` created (removed again by `discard` when left empty).
    """

    out: Path
    path: Path
    tmp: Path
    overwrite: bool
    created: list[Path] = field(default_factory=list)

    def discard(self) -> None:
        """Remove the temporary sibling and the parents created for it (a run that did not finish)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                folder.rmdir()

    def finish(self) -> None:
        """Rename the written temporary sibling into place, replacing a run folder there (checked again:
        it may have changed during the run).

        Raises:
            ConfigError: the target cannot be replaced or renamed; the finished run stays in ``tmp`` and the
                message says so.
        """
        try:
            check_target(self.path, overwrite=self.overwrite, shown=str(self.out))
        except ConfigError as err:
            raise ConfigError(f"{err} (the finished run is in {self.tmp})") from None
        try:
            if self.path.exists() and _listing(self.path):
                trash = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
                self.path.rename(trash)
                try:
                    self.tmp.rename(self.path)
                except OSError:
                    trash.rename(self.path)  # put the previous run back
                    raise
                shutil.rmtree(trash, ignore_errors=True)
            else:
                self.tmp.rename(self.path)  # onto nothing, or onto an empty folder (rename(2) replaces it)
        except OSError as err:
            raise ConfigError(
                f"cannot move the finished run into out={self.out} ({_reason(err)}); it is in {self.tmp}"
            ) from None


def prepare(out: str | os.PathLike[str], *, overwrite: bool) -> OutputTarget:
    """Check the run folder ``out`` and reserve its temporary sibling, before any work.

    Cleans up after killed runs (`clean_stale`), then creates the missing parent folders and
    ``.NAME.tmp-PID`` beside ``out`` (reusing one of this process). Nothing else that exists is changed.

    Raises:
        ConfigError: ``out`` is a file, a symbolic link, the file-system root or a folder that may not be
            replaced (see `check_target`), or its place cannot be written (read-only, immutable, a path
            through a file), as one line naming ``out`` and the reason.
    """
    shown = os.fspath(out)
    given = Path(shown).expanduser()
    path = Path(os.path.abspath(given))
    if path.parent == path:
        raise ConfigError(f"out={shown} is the root of the file system; give a folder for the run")
    if path.parent.is_dir():
        clean_stale(path)  # first: it may put back a run folder an interrupted overwrite had moved aside
    check_target(path, overwrite=overwrite, shown=shown)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"out={shown} goes through {existing}, which is a file, not a folder; choose another out=")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"out={shown}: cannot create the folder {path.parent} ({_reason(err)})") from None
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    target = OutputTarget(out=given, path=path, tmp=tmp, overwrite=overwrite, created=sorted(created))
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        if path.exists():
            # an immutable folder refuses a rename: find out now, not after the attack (put back at once)
            probe = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(probe)
            probe.rename(path)
    except OSError as err:
        target.discard()
        raise ConfigError(f"out={shown}: cannot write the run folder there ({_reason(err)})") from None
    return target


@contextlib.contextmanager
def deferred_sigint() -> Iterator[list[int]]:
    """Hold Ctrl-C (SIGINT) back while the block runs: the block completes, and the yielded list tells
    whether a SIGINT came meanwhile. Outside the main thread, where handlers cannot be set, nothing is held."""
    caught: list[int] = []
    previous: Any = None
    installed = threading.current_thread() is threading.main_thread()
    if installed:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _plain(value: Any, where: str, bad: list[str]) -> Any:
    """``value`` with NaN and ±inf floats replaced by None (their paths appended to ``bad``)."""
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}" if where else str(k), bad) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", bad) for i, v in enumerate(value)]
    if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(where or "(value)")
        return None
    return value


def json_text(value: Any, *, what: str, indent: int = 2) -> str:
    """``value`` as strict JSON text: NaN and ±inf become null, with one logged warning naming ``what`` and
    the keys; other objects JSON cannot hold are written with ``str``."""
    bad: list[str] = []
    plain = _plain(value, "", bad)
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        log.warning("%s: non-finite values written as null: %s", what, listed)
    return json.dumps(plain, indent=indent, allow_nan=False, default=str)
