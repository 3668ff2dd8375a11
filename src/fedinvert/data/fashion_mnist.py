"""Fashion-MNIST (Xiao et al., 2017) from its IDX files: 28×28 grey images of clothing, 10 classes.

Files: ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz`` (60,000 images) and
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (10,000 images); uncompressed copies
(without ``.gz``) work too. They are looked for in this order:

1. ``root`` (the folder itself or its ``fashion-mnist`` subfolder); when given, nowhere else;
2. the environment variable ``FEDINVERT_DATA`` (the folder itself or its ``fashion-mnist`` subfolder);
3. ``/usr/share/datasets/fashion-mnist``, where the Debian package ``dataset-fashion-mnist`` puts them.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np
from torch import Tensor

from fedinvert.data.base import DATASETS, Dataset, file_key, read_only
from fedinvert.data.transforms import to_tensor
from fedinvert.errors import DataNotFoundError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FEDINVERT_DATA"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# IDX magic numbers: two zero bytes, the type code 0x08 (unsigned byte) and the number of dimensions.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def read_idx(path: str | Path, *, magic: int) -> np.ndarray:
    """An IDX file (optionally gzip-compressed) as a read-only uint8 array.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.
        magic: the expected magic number, 0x803 for (N, H, W) images or 0x801 for (N,) labels.

    Raises:
        DataNotFoundError: the file is unreadable, truncated or not the IDX file expected.
    """
    return _read_idx_cached(*file_key(path), magic)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int, magic: int) -> np.ndarray:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = Path(path).read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise _corrupt(path, f"cannot be read ({err})") from None
    if len(raw) < 4:
        raise _corrupt(path, "is too short to be an IDX file")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise _corrupt(path, f"has magic number {found:#010x}, expected {magic:#010x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, "ends inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise _corrupt(path, f"holds {len(raw) - header} data bytes, its header promises {expected} {shape}")
    return read_only(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape))


def _corrupt(path: str, problem: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"Fashion-MNIST file {path} {problem}; reinstall the Debian package dataset-fashion-mnist "
        f"or replace the file"
    )


@DATASETS.register("fashion-mnist")
class FashionMNIST(Dataset):
    """Fashion-MNIST: (1, 28, 28) grey images in [0, 1], 10 classes (see `CLASSES`).

    Splits ``train`` (60,000 images) and ``test`` (10,000, the default), in file order.

    Args:
        root: folder holding the IDX files (or a ``fashion-mnist`` subfolder of it). ``None`` searches
            ``$FEDINVERT_DATA`` and then ``/usr/share/datasets/fashion-mnist``.
    """

    name = "fashion-mnist"
    splits = ("train", "test")
    default_split = "test"

    def __init__(self, *, root: str | Path | None = None) -> None:
        self.root = None if root is None else Path(root)
        self.num_classes = len(CLASSES)

    def candidates(self) -> list[Path]:
        """The folders searched for the IDX files, in order."""
        if self.root is not None:
            return [self.root, self.root / "fashion-mnist"]
        env = os.environ.get(ENV_VAR)
        return ([Path(env), Path(env) / "fashion-mnist"] if env else []) + [SYSTEM_DIR]

    def files(self, *, split: str | None = None) -> tuple[Path, Path]:
        """Paths of the (images, labels) IDX files of ``split``; DataNotFoundError saying how to get them."""
        split = self.resolve_split(split)
        for folder in self.candidates():
            found = [_existing(folder / stem) for stem in FILES[split]]
            if found[0] is not None and found[1] is not None:
                return found[0], found[1]
        searched = ", ".join(str(folder) for folder in self.candidates())
        raise DataNotFoundError(
            f"Fashion-MNIST {split} files ({FILES[split][0]}.gz, {FILES[split][1]}.gz) not found in {searched}; "
            f"install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
            f"or put the files in a folder and set {ENV_VAR} or dataset.root to it"
        )

    def labels(self, *, split: str | None = None) -> np.ndarray:
        labels_path = self.files(split=split)[1]
        labels = read_idx(labels_path, magic=IDX_LABELS_MAGIC)
        if labels.size and int(labels.max()) >= self.num_classes:
            raise _corrupt(str(labels_path), f"holds label {int(labels.max())}, Fashion-MNIST has 10 classes")
        return read_only(labels.astype(np.int64))

    def _images(self, indices: np.ndarray, split: str) -> Tensor:
        images_path, labels_path = self.files(split=split)
        images = read_idx(images_path, magic=IDX_IMAGES_MAGIC)
        count = len(read_idx(labels_path, magic=IDX_LABELS_MAGIC))
        if len(images) != count:
            raise _corrupt(str(images_path), f"holds {len(images)} images but the labels file {count} labels")
        return to_tensor(images[indices])


def _existing(stem: Path) -> Path | None:
    """``stem.gz`` or ``stem`` if either is a file, preferring the compressed original."""
    for path in (stem.with_name(stem.name + ".gz"), stem):
        if path.is_file():
            return path
    return None
