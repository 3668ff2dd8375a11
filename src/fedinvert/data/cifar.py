"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the standard "python version" pickle batches.

Layout (as unpacked from ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``)::

    <root>/cifar-10-batches-py/data_batch_1 … data_batch_5, test_batch
    <root>/cifar-100-python/train, test

``<root>`` is ``dataset.root`` or, without it, the environment variable ``FEDINVERT_DATA``; the batch
folder may also be given directly. fedinvert never downloads them.

The batches are pickles, and unpickling can run arbitrary code. They are read with `RestrictedUnpickler`,
which resolves only the handful of globals a CIFAR batch needs (NumPy array reconstruction) and refuses
everything else, so a tampered file fails with an error instead of running its payload.
"""

from __future__ import annotations

import codecs
import functools
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from fedinvert.data.base import DATASETS, Dataset, file_key, read_only
from fedinvert.data.transforms import to_tensor
from fedinvert.errors import DataNotFoundError

ENV_VAR = "FEDINVERT_DATA"
IMAGE_SHAPE = (3, 32, 32)
_ARRAY = np.zeros(1, dtype=np.uint8)


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, limited to the latin-1 codec."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with codec {encoding!r}")
    return text.encode("latin-1", errors)


# The globals a pickled NumPy array refers to, under NumPy 1 and NumPy 2 module names. The functions are
# taken from NumPy's own pickling, so no private module is imported here.
_RECONSTRUCT = _ARRAY.__reduce__()[0]
_FROMBUFFER = _ARRAY.__reduce_ex__(5)[0]
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for data files: dicts, lists, tuples, str, bytes, numbers and NumPy arrays only.

    Any other global (``os.system``, ``builtins.eval``, a class of some module, ...) raises
    `pickle.UnpicklingError` before it is looked up, let alone called.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"forbidden global '{module}.{name}': a data file may hold only lists, dicts, strings, "
                f"numbers and NumPy arrays"
            ) from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with `RestrictedUnpickler` (Python 2 strings become bytes, as in CIFAR batches)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def read_batch(path: str | Path, *, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file as (images (N, 3, 32, 32) uint8, labels (N,) int64).

    Args:
        path: the batch file.
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` / ``"coarse_labels"`` (CIFAR-100).

    Raises:
        DataNotFoundError: the file is unreadable, is not a safe pickle or does not hold a CIFAR batch.
    """
    try:
        batch = restricted_loads(Path(path).read_bytes())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataNotFoundError(f"CIFAR batch {path} is not a valid pickle batch: {err}") from None
    if not isinstance(batch, dict):
        raise DataNotFoundError(f"CIFAR batch {path} holds a {type(batch).__name__}, not a dict")
    batch = {key.decode("latin-1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataNotFoundError(
            f"CIFAR batch {path} lacks the keys 'data' and '{label_key}' (has: {', '.join(map(str, batch))})"
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    pixels = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels or len(labels) != len(data):
        raise DataNotFoundError(
            f"CIFAR batch {path} holds data {data.dtype}{tuple(data.shape)} and {len(labels)} labels; "
            f"expected uint8 (N, {pixels}) and N labels"
        )
    return data.reshape(-1, *IMAGE_SHAPE), labels


@functools.lru_cache(maxsize=2)
def _read_split(files: tuple[tuple[str, int, int], ...], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The batches ``files`` ((path, mtime_ns, size) each) joined into one split, both arrays read-only."""
    batches = [read_batch(path, label_key=label_key) for path, _, _ in files]
    images = np.concatenate([batch[0] for batch in batches])
    labels = np.concatenate([batch[1] for batch in batches])
    return read_only(images), read_only(labels)


class CIFAR(Dataset):
    """Common code of CIFAR-10 and CIFAR-100: (3, 32, 32) RGB images in [0, 1].

    Splits ``train`` (50,000 images) and ``test`` (10,000, the default), in file order.

    Args:
        root: folder holding the batch folder (or the batch folder itself); ``None`` uses ``$FEDINVERT_DATA``.
    """

    splits = ("train", "test")
    default_split = "test"
    folder: str
    archive: str
    files: dict[str, tuple[str, ...]]
    label_key: str

    def __init__(self, *, root: str | Path | None = None) -> None:
        self.root = None if root is None else Path(root)

    def candidates(self) -> list[Path]:
        """The folders searched for the batch files, in order."""
        base = self.root
        if base is None:
            env = os.environ.get(ENV_VAR)
            base = Path(env) if env else None
        return [] if base is None else [base / self.folder, base]

    def paths(self, *, split: str | None = None) -> list[Path]:
        """The batch files of ``split``; DataNotFoundError saying where to put them."""
        split = self.resolve_split(split)
        for folder in self.candidates():
            paths = [folder / name for name in self.files[split]]
            if all(path.is_file() for path in paths):
                return paths
        searched = ", ".join(map(str, self.candidates())) or f"nowhere: neither dataset.root nor {ENV_VAR} is set"
        raise DataNotFoundError(
            f"{self.name} {split} batches ({', '.join(self.files[split])}) not found (searched {searched}); "
            f"fedinvert never downloads: get {self.archive} (python version) from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html, unpack it to <dir>/{self.folder}/ and set "
            f"dataset.root=<dir> or {ENV_VAR}=<dir>"
        )

    def _read(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return _read_split(tuple(file_key(path) for path in self.paths(split=split)), self.label_key)

    def labels(self, *, split: str | None = None) -> np.ndarray:
        labels = self._read(self.resolve_split(split))[1]
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise DataNotFoundError(
                f"{self.name} labels must lie in 0..{self.num_classes - 1}, found {int(labels.min())}.."
                f"{int(labels.max())}; is this a {self.name} batch?"
            )
        return labels

    def _images(self, indices: np.ndarray, split: str) -> Tensor:
        return to_tensor(self._read(split)[0][indices])


@DATASETS.register("cifar10")
class CIFAR10(CIFAR):
    """CIFAR-10: 10 classes (airplane … truck), ``data_batch_1..5`` (train) and ``test_batch`` (test)."""

    name = "cifar10"
    folder = "cifar-10-batches-py"
    archive = "cifar-10-python.tar.gz"
    files = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    label_key = "labels"

    def __init__(self, *, root: str | Path | None = None) -> None:
        super().__init__(root=root)
        self.num_classes = 10


@DATASETS.register("cifar100")
class CIFAR100(CIFAR):
    """CIFAR-100 with its 100 fine labels, files ``train`` and ``test``."""

    name = "cifar100"
    folder = "cifar-100-python"
    archive = "cifar-100-python.tar.gz"
    files = {"train": ("train",), "test": ("test",)}
    label_key = "fine_labels"

    def __init__(self, *, root: str | Path | None = None) -> None:
        super().__init__(root=root)
        self.num_classes = 100
