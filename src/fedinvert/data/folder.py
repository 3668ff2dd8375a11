"""Any ImageFolder tree: ``root/<class_name>/<image>`` with PNG, JPEG or BMP files.

Classes are the sub-folders of ``root`` sorted by name (label ``k`` is the ``k``-th name); the images of a
class are the files below its folder (sub-folders included) sorted by path. The whole tree is one split,
``test``, in that order. Images are decoded with Pillow (EXIF orientation applied) as RGB, or as grey when
every image of the tree is grey, and brought to one square size: each is resized so its shorter side equals
``image_size`` and centre-cropped. Without ``image_size`` the shorter side of the first image is used.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from fedinvert.data.base import DATASETS, Dataset, check_positive_int, file_key, read_only
from fedinvert.data.transforms import square_crop, to_tensor
from fedinvert.errors import ConfigError, DataNotFoundError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@functools.lru_cache(maxsize=8)
def _inspect(files: tuple[tuple[str, int, int], ...]) -> tuple[str, tuple[int, int]]:
    """(decode mode, (width, height) of the first file) for ``files`` given as `file_key` tuples."""
    modes = []
    first_size = (0, 0)
    for position, (path, _, _) in enumerate(files):
        try:
            with Image.open(path) as image:
                modes.append(image.mode)
                if position == 0:
                    first_size = ImageOps.exif_transpose(image).size
        except (OSError, UnidentifiedImageError) as err:
            raise DataNotFoundError(f"image {path} cannot be read ({err})") from None
    mode = "L" if all(mode in GREY_MODES for mode in modes) else "RGB"
    return mode, first_size


@functools.lru_cache(maxsize=4096)
def _decode(key: tuple[str, int, int], mode: str, size: int) -> Tensor:
    """The image file of `file_key` ``key`` as (1, C, size, size) float32 in [0, 1]."""
    path = key[0]
    try:
        with Image.open(path) as image:
            array = np.asarray(ImageOps.exif_transpose(image).convert(mode))
    except (OSError, UnidentifiedImageError) as err:
        raise DataNotFoundError(f"image {path} cannot be read ({err})") from None
    return square_crop(to_tensor(array[None], channels_last=mode == "RGB"), size)


@DATASETS.register("folder")
class ImageFolder(Dataset):
    """An ImageFolder tree as (C, S, S) images in [0, 1], C = 1 if every image is grey else 3.

    Args:
        root: the folder whose sub-folders are the classes.
        image_size: side S of the square images; ``None`` takes the shorter side of the first image.

    Raises:
        ConfigError: no ``root`` given.
        DataNotFoundError: ``root`` does not exist, has no class folders or no images, or an image is unreadable.
    """

    name = "folder"

    def __init__(self, *, root: str | Path | None = None, image_size: int | None = None) -> None:
        if root is None:
            raise ConfigError("dataset 'folder' needs dataset.root: a folder with one sub-folder per class")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataNotFoundError(f"image folder {self.root} does not exist or is not a folder")
        self.classes = tuple(
            sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        )
        if not self.classes:
            raise DataNotFoundError(
                f"image folder {self.root} has no class sub-folders; expected {self.root}/<class>/<image>.png"
            )
        files: list[tuple[str, int, int]] = []
        labels: list[int] = []
        for label, class_name in enumerate(self.classes):
            for path in sorted((self.root / class_name).rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                    files.append(file_key(path))
                    labels.append(label)
        if not files:
            raise DataNotFoundError(
                f"image folder {self.root} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders"
            )
        self.files = tuple(files)
        self._labels = read_only(np.asarray(labels, dtype=np.int64))
        self.num_classes = len(self.classes)
        self.mode, first_size = _inspect(self.files)
        size = min(first_size) if image_size is None else image_size
        self.image_size = check_positive_int(size, key="image_size")

    def labels(self, *, split: str | None = None) -> np.ndarray:
        self.resolve_split(split)
        return self._labels

    def _images(self, indices: np.ndarray, split: str) -> Tensor:
        channels = 1 if self.mode == "L" else 3
        if indices.size == 0:
            return torch.empty(0, channels, self.image_size, self.image_size)
        return torch.cat([_decode(self.files[i], self.mode, self.image_size) for i in indices.tolist()])
