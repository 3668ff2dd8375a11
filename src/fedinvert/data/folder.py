"""A folder of the user's own images: class sub-folders, a flat folder, or a ``labels.csv``.

Three layouts of ``root`` are read, tried in this order:

1. ``root/labels.csv`` with rows ``filename,label`` (a header row ``filename,label`` is optional): the data set
   is exactly the files those rows name (paths relative to ``root``, sub-folders allowed), in the order of
   the rows, with the integer labels given (≥ 0). Image files the CSV does not name are not part of it.
2. Class sub-folders ``root/<class_name>/<image>``: classes are the sub-folders sorted by name (label ``k``
   is the ``k``-th name); the images of a class are the files below its folder (sub-folders included)
   sorted by path. A single class folder is one class: its images get label 0.
3. A flat folder ``root/<image>``: the images directly in ``root``, sorted by name, all of label 0.

The label space is the class folders' count (layout 2) or the largest label + 1 (layout 1), unless
``num_classes`` is given, which must cover every label. The victim's head needs at least 2 classes, so a flat
folder, a single class folder or a CSV of one label needs ``num_classes`` (≥ 2): "attack my own images" is
``dataset=folder dataset.root=DIR num_classes=10``.

The whole folder is one split, ``test``, in the order above. Images are PNG, JPEG or BMP files decoded with
Pillow (EXIF orientation applied) as RGB, or as grey when every image is grey, and brought to one square
size: each is resized so its shorter side equals ``image_size`` and centre-cropped. Without ``image_size``
the shorter side of the first image is used.
"""

from __future__ import annotations

import csv
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
LABELS_FILE = "labels.csv"
# Pillow refuses images above its pixel limit (a "decompression bomb") with its own error class
_UNREADABLE = (OSError, UnidentifiedImageError, Image.DecompressionBombError)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith(".")


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
        except _UNREADABLE as err:
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
    except _UNREADABLE as err:
        raise DataNotFoundError(f"image {path} cannot be read ({err})") from None
    return square_crop(to_tensor(array[None], channels_last=mode == "RGB"), size)


def read_labels_csv(root: Path) -> tuple[list[Path], list[int]]:
    """The files and labels listed in ``root/labels.csv`` (rows ``filename,label``, optional header).

    Raises:
        ConfigError: a row without exactly two fields, a label that is not an integer ≥ 0, a file named
            twice, a name that is absolute or leaves ``root``, or no rows at all.
        DataNotFoundError: a named file does not exist or is not a PNG, JPEG or BMP file.
    """
    table = root / LABELS_FILE
    try:
        with table.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataNotFoundError(f"{table} cannot be read ({err})") from None
    files: list[Path] = []
    labels: list[int] = []
    seen: set[Path] = set()
    resolved_root = root.resolve()
    for number, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise ConfigError(f"{table} line {number}: expected 'filename,label', got {','.join(row)!r}")
        name, raw = row[0].strip(), row[1].strip()
        if number == 1 and name.lower() == "filename" and raw.lower() == "label":
            continue
        try:
            label = int(raw)
        except ValueError:
            label = -1
        if label < 0:
            raise ConfigError(f"{table} line {number}: label must be an integer ≥ 0, got {raw!r}")
        path = root / name
        if Path(name).is_absolute() or not path.resolve().is_relative_to(resolved_root):
            raise ConfigError(f"{table} line {number}: {name!r} must be a path inside {root}")
        if not _is_image(path):
            raise DataNotFoundError(
                f"{table} line {number}: {path} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        if path in seen:
            raise ConfigError(f"{table} line {number}: {name!r} is listed twice")
        seen.add(path)
        files.append(path)
        labels.append(label)
    if not files:
        raise ConfigError(f"{table} lists no images; expected rows 'filename,label'")
    return files, labels


@DATASETS.register("folder")
class ImageFolder(Dataset):
    """The user's images (see the module docstring for the three layouts) as (C, S, S) images in [0, 1],
    C = 1 if every image is grey else 3.

    Args:
        root: the folder: with ``labels.csv``, with one sub-folder per class, or holding the images.
        image_size: side S of the square images; ``None`` takes the shorter side of the first image.
        num_classes: size of the label space (≥ 2, covering every label); needed when the folder gives
            fewer than 2 classes (a flat folder, a single class folder, a CSV of one label).

    Attributes:
        classes: names of the class folders (label ``k`` is ``classes[k]``); empty for the other layouts.

    Raises:
        ConfigError: no ``root``; fewer than 2 classes without ``num_classes``; ``num_classes`` below 2 or
            not covering every label; a bad ``labels.csv``; images both loose in ``root`` and in class folders.
        DataNotFoundError: ``root`` does not exist or holds no images, or an image is unreadable.
    """

    name = "folder"

    def __init__(
        self, *, root: str | Path | None = None, image_size: int | None = None, num_classes: int | None = None
    ) -> None:
        if root is None:
            raise ConfigError(
                "dataset 'folder' needs dataset.root: a folder of images, of class sub-folders, or with labels.csv"
            )
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataNotFoundError(f"image folder {self.root} does not exist or is not a folder")
        self.classes: tuple[str, ...] = ()
        if (self.root / LABELS_FILE).is_file():
            paths, labels = read_labels_csv(self.root)
            found, layout = max(labels) + 1, f"{LABELS_FILE} gives labels up to {max(labels)}"
        else:
            paths, labels = self._scan()
            found = len(self.classes) or 1
            layout = (
                f"it has a single class folder '{self.classes[0]}' (label 0)"
                if len(self.classes) == 1
                else f"it has {len(self.classes)} class folders"
                if self.classes
                else "it holds images but no class folders (all label 0)"
            )
        self.num_classes = self._label_space(num_classes, found, layout)
        self.files = tuple(file_key(p) for p in paths)
        self._labels = read_only(np.asarray(labels, dtype=np.int64))
        self.mode, first_size = _inspect(self.files)
        size = min(first_size) if image_size is None else image_size
        self.image_size = check_positive_int(size, key="image_size")

    def _scan(self) -> tuple[list[Path], list[int]]:
        """Images and labels of a class-folder or flat layout; sets ``self.classes``."""
        entries = sorted(p for p in self.root.iterdir() if not p.name.startswith("."))
        class_dirs = [p for p in entries if p.is_dir()]
        loose = [p for p in entries if _is_image(p)]
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        if class_dirs and loose:
            raise ConfigError(
                f"image folder {self.root} holds both images ({loose[0].name}, ...) and class folders"
                f" ({class_dirs[0].name}, ...); move the images into class folders or list them in {LABELS_FILE}"
            )
        if loose:
            return loose, [0] * len(loose)
        if not class_dirs:
            raise DataNotFoundError(
                f"image folder {self.root} has no images ({suffixes}); expected {self.root}/<image>.png,"
                f" {self.root}/<class>/<image>.png or a {LABELS_FILE}"
            )
        self.classes = tuple(p.name for p in class_dirs)
        paths: list[Path] = []
        labels: list[int] = []
        for label, folder in enumerate(class_dirs):
            images = [p for p in sorted(folder.rglob("*")) if _is_image(p)]
            paths.extend(images)
            labels.extend([label] * len(images))
        if not paths:
            raise DataNotFoundError(f"image folder {self.root} has no images ({suffixes}) in its class folders")
        return paths, labels

    def _label_space(self, num_classes: int | None, found: int, layout: str) -> int:
        """``num_classes`` checked against the ``found`` classes of the folder (``layout`` says why)."""
        if num_classes is None:
            if found < 2:
                raise ConfigError(
                    f"image folder {self.root}: {layout}, but the victim needs at least 2 classes;"
                    f" set num_classes= (≥ 2) for the size of the label space"
                )
            return found
        num_classes = check_positive_int(num_classes, key="num_classes")
        if num_classes < max(found, 2):
            why = layout if num_classes < found else "the victim needs at least 2 classes"
            raise ConfigError(
                f"num_classes={num_classes} is too small for image folder {self.root}: {why};"
                f" set num_classes ≥ {max(found, 2)}"
            )
        return num_classes

    def labels(self, *, split: str | None = None) -> np.ndarray:
        self.resolve_split(split)
        return self._labels

    def _images(self, indices: np.ndarray, split: str) -> Tensor:
        channels = 1 if self.mode == "L" else 3
        if indices.size == 0:
            return torch.empty(0, channels, self.image_size, self.image_size)
        return torch.cat([_decode(self.files[i], self.mode, self.image_size) for i in indices.tolist()])
