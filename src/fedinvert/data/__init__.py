"""Data sets, all read from this machine (DESIGN §7): nothing is ever downloaded.

Registered names: ``fashion-mnist`` (IDX files, Debian package ``dataset-fashion-mnist``), ``photos``
(colour photos bundled in scikit-image, scikit-learn and matplotlib), ``lfw`` (scikit-image's LFW faces),
``digits`` (scikit-learn), ``folder`` (any ImageFolder tree), ``cifar10`` / ``cifar100`` (the python
pickle batches from a local path) and ``synthetic`` (smooth random images, for tests).

`load_batch` draws a run's private batch, `public_pool` / `distractor_pool` the images the no-leak
reference and the re-identification rate compare it with; a data set's class gives the whole split as an `ImageSet`.
"""

from fedinvert.data.base import DATASETS, Dataset, ImageSet, UnlabelledDataset
from fedinvert.data.cifar import CIFAR10, CIFAR100, RestrictedUnpickler, restricted_loads
from fedinvert.data.digits import Digits
from fedinvert.data.fashion_mnist import FashionMNIST, read_idx
from fedinvert.data.folder import ImageFolder
from fedinvert.data.lfw import LFW
from fedinvert.data.loader import (
    Batch,
    ImagePool,
    build_dataset,
    check_normalization,
    default_normalization,
    distractor_pool,
    load_batch,
    public_images,
    public_pool,
    resolve_normalization,
    sample_indices,
)
from fedinvert.data.photos import PHOTO_ORDER, Photos
from fedinvert.data.synthetic import Synthetic
from fedinvert.data.transforms import convert_channels, resize, square_crop

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATASETS",
    "LFW",
    "PHOTO_ORDER",
    "Batch",
    "Dataset",
    "Digits",
    "FashionMNIST",
    "ImageFolder",
    "ImagePool",
    "ImageSet",
    "Photos",
    "RestrictedUnpickler",
    "Synthetic",
    "UnlabelledDataset",
    "build_dataset",
    "check_normalization",
    "convert_channels",
    "default_normalization",
    "distractor_pool",
    "load_batch",
    "public_images",
    "public_pool",
    "read_idx",
    "resize",
    "resolve_normalization",
    "restricted_loads",
    "sample_indices",
    "square_crop",
]
