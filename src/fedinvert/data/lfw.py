"""Real faces from Labeled Faces in the Wild, as bundled with scikit-image (``skimage.data.lfw_subset``).

scikit-image ships 200 grey 25×25 crops: the first 100 are faces, the other 100 are non-face patches for
its face-detection example. This data set is the 100 faces, in the file's order. They carry no identity
labels here: face ``i`` gets label ``i mod num_classes``.
"""

from __future__ import annotations

import functools

import numpy as np
from torch import Tensor

from fedinvert.data.base import DATASETS, UnlabelledDataset, read_only
from fedinvert.data.transforms import to_tensor
from fedinvert.errors import DataNotFoundError

NUM_FACES = 100


@functools.lru_cache(maxsize=1)
def read_faces() -> np.ndarray:
    """The 100 faces: a read-only (100, 25, 25) float32 array in [0, 1]."""
    import skimage.data

    try:
        faces = skimage.data.lfw_subset()[:NUM_FACES]
    except (OSError, ModuleNotFoundError) as err:
        raise DataNotFoundError(
            f"scikit-image's LFW subset could not be read ({err}); reinstall scikit-image"
        ) from None
    return read_only(np.clip(faces.astype(np.float32), 0.0, 1.0))


@DATASETS.register("lfw")
class LFW(UnlabelledDataset):
    """100 real faces from LFW: (1, 25, 25) grey images in [0, 1]; one split, ``test``.

    Args:
        num_classes: size of the label space the faces are spread over (label = index mod num_classes).
    """

    name = "lfw"

    def __init__(self, *, num_classes: int = 10) -> None:
        super().__init__(num_classes=num_classes)

    def _count(self, split: str) -> int:
        return NUM_FACES

    def _images(self, indices: np.ndarray, split: str) -> Tensor:
        return to_tensor(read_faces()[indices])
