"""Real colour photos bundled in the scikit-image, scikit-learn and matplotlib wheels, as square crops.

The photos, in this fixed order (index ``i`` of the ``photos`` data set is ``PHOTO_ORDER[i]``):

==  ====================  =============================================  ==================
 i  name                  what                                           source file
==  ====================  =============================================  ==================
 0  astronaut             astronaut Eileen Collins (NASA)                skimage data/astronaut.png
 1  chelsea               Chelsea the cat                                skimage data/chelsea.png
 2  coffee                a cup of coffee                                skimage data/coffee.png
 3  rocket                SpaceX Falcon 9 on its launch pad              skimage data/rocket.jpg
 4  hubble_deep_field     Hubble eXtreme Deep Field (galaxies)           skimage data/hubble_deep_field.jpg
 5  immunohistochemistry  stained tissue under a microscope              skimage data/ihc.png
 6  retina                human retina (fundus photo)                    skimage data/retina.jpg
 7  motorcycle            motorcycle (left view of a stereo pair)        skimage data/motorcycle_left.png
 8  china                 a Chinese temple                               sklearn datasets/images/china.jpg
 9  flower                a flower                                       sklearn datasets/images/flower.jpg
10  grace_hopper          Rear Admiral Grace Hopper                      matplotlib sample_data/grace_hopper.jpg
==  ====================  =============================================  ==================

Drawings, synthetic pictures and grey images of those packages (logo, colorwheel, camera, ...) are left
out. Each photo is resized (bilinear, anti-aliased) so that its shorter side equals ``image_size`` and
then centre-cropped to ``image_size`` × ``image_size``. The photos have no labels: photo ``i`` gets label
``i mod num_classes``. The files are read straight from the installed packages; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fedinvert.cache import cache_root
from fedinvert.data.base import DATASETS, UnlabelledDataset, check_positive_int, read_only
from fedinvert.data.transforms import square_crop, to_tensor
from fedinvert.errors import DataNotFoundError

# name -> (package, path inside the installed package)
PHOTO_FILES: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage", "data/ihc.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
PHOTO_ORDER: tuple[str, ...] = tuple(PHOTO_FILES)
DEFAULT_IMAGE_SIZE = 32


def photo_path(name: str) -> Path:
    """Where the installed package keeps photo ``name`` (the package is located, not imported)."""
    package, relative = PHOTO_FILES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataNotFoundError(
            f"photo '{name}' comes with the Python package {package}, which is not installed; "
            f"install it (pip install {'scikit-image' if package == 'skimage' else package})"
        )
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise DataNotFoundError(f"photo '{name}' is missing from the installed {package} ({path}); reinstall it")
    return path


@functools.lru_cache(maxsize=len(PHOTO_FILES))
def read_photo(name: str) -> np.ndarray:
    """Photo ``name`` at its full size: a read-only (H, W, 3) uint8 array."""
    with Image.open(photo_path(name)) as image:
        return read_only(np.asarray(image.convert("RGB")).copy())


CROP_LAYOUT = 1
"""Version of the cached crops' layout; part of their key."""


@functools.lru_cache(maxsize=8)
def _crops(size: int) -> Tensor:
    """All photos as (11, 3, size, size) crops in [0, 1].

    Decoding and resizing the 11 full-size photos takes about 0.3 s, a large share of a short run's start-up,
    so the crops are kept under ``$FEDINVERT_CACHE/photos`` as a plain ``.npy`` array (read without pickle).
    The key names the photo files' sizes and modification times, the crop size and the torch version (the
    resize is torch's), so a changed photo or resize is never read from an old entry.
    """
    path = cache_root() / "photos" / f"crops-{size}-{_crop_key(size)}.npy"
    with contextlib.suppress(OSError, ValueError):
        data = np.load(path, allow_pickle=False)
        if data.shape == (len(PHOTO_ORDER), 3, size, size) and data.dtype == np.float32:
            return torch.from_numpy(np.array(data))
    photos = [to_tensor(read_photo(name)[None], channels_last=True) for name in PHOTO_ORDER]
    crops = torch.cat([square_crop(photo, size) for photo in photos])
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}.npy")
        np.save(scratch, crops.numpy(), allow_pickle=False)
        os.replace(scratch, path)
    return crops


def _crop_key(size: int) -> str:
    parts = [str(CROP_LAYOUT), str(size), torch.__version__]
    for name in PHOTO_ORDER:
        stat = photo_path(name).stat()
        parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@DATASETS.register("photos")
class Photos(UnlabelledDataset):
    """The 11 bundled colour photos (`PHOTO_ORDER`) as (3, image_size, image_size) crops in [0, 1].

    One split, ``test``. Labels are ``index mod num_classes``.

    Args:
        image_size: side of the square crops in pixels (the shorter side of each photo is resized to it).
        num_classes: size of the label space the photos are spread over.
    """

    name = "photos"

    def __init__(self, *, image_size: int = DEFAULT_IMAGE_SIZE, num_classes: int = 10) -> None:
        super().__init__(num_classes=num_classes)
        self.image_size = check_positive_int(image_size, key="image_size")

    @property
    def photo_names(self) -> tuple[str, ...]:
        """Photo names in index order."""
        return PHOTO_ORDER

    def _count(self, split: str) -> int:
        return len(PHOTO_ORDER)

    def _images(self, indices: np.ndarray, split: str) -> Tensor:
        return _crops(self.image_size)[torch.from_numpy(indices)]
