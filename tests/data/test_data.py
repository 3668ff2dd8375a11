"""Tests of fedinvert.data: every registered data set, batch selection, transforms and safe file reading."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from fedinvert.data import (
    DATASETS,
    PHOTO_ORDER,
    FashionMNIST,
    ImageSet,
    Photos,
    build_dataset,
    default_normalization,
    load_batch,
    read_idx,
    restricted_loads,
    square_crop,
)
from fedinvert.data.fashion_mnist import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, SYSTEM_DIR
from fedinvert.errors import ConfigError, DataNotFoundError

FASHION_AVAILABLE = (SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not FASHION_AVAILABLE, reason="Debian package dataset-fashion-mnist is not installed"
)


# --- helpers that write small data files -------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_fashion(folder: Path, *, count: int = 6) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = np.arange(count * 28 * 28, dtype=np.int64).reshape(count, 28, 28) % 256
    labels = np.arange(count) % 10
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images, magic=IDX_IMAGES_MAGIC)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels, magic=IDX_LABELS_MAGIC)
    return images.astype(np.uint8), labels


def write_cifar_batch(path: Path, *, count: int, label_key: bytes, offset: int, protocol: int) -> np.ndarray:
    rng = np.random.default_rng(offset)
    data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    labels = [(offset + i) % 10 for i in range(count)]
    batch = {b"batch_label": b"fake", b"data": data, label_key: labels, b"filenames": [b"x.png"] * count}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return data


def write_folder(root: Path) -> None:
    """Two classes, 'cat' with a 40×30 and a 30×30 image, 'bird' with one 20×20 image (all RGB)."""
    for class_name, sizes in {"cat": [(40, 30), (30, 30)], "bird": [(20, 20)]}.items():
        (root / class_name).mkdir(parents=True)
        for i, size in enumerate(sizes):
            colour = (200, 30 * i, 10) if class_name == "cat" else (0, 0, 255)
            Image.new("RGB", size, colour).save(root / class_name / f"{i}.png")


@pytest.fixture
def data_roots(tmp_path: Path) -> dict[str, Path]:
    """Roots for the data sets that read files: fake CIFAR-10/100 batches and an ImageFolder tree."""
    cifar10 = tmp_path / "cifar" / "cifar-10-batches-py"
    cifar10.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_batch(cifar10 / f"data_batch_{i}", count=3, label_key=b"labels", offset=10 * i, protocol=4)
    write_cifar_batch(cifar10 / "test_batch", count=4, label_key=b"labels", offset=0, protocol=4)
    cifar100 = tmp_path / "cifar" / "cifar-100-python"
    cifar100.mkdir(parents=True)
    write_cifar_batch(cifar100 / "train", count=5, label_key=b"fine_labels", offset=1, protocol=4)
    write_cifar_batch(cifar100 / "test", count=4, label_key=b"fine_labels", offset=2, protocol=4)
    write_folder(tmp_path / "folder")
    return {"cifar10": tmp_path / "cifar", "cifar100": tmp_path / "cifar", "folder": tmp_path / "folder"}


# (C, H, W) of each registered data set at its native size
NATIVE_SHAPES = {
    "fashion-mnist": (1, 28, 28),
    "photos": (3, 32, 32),
    "lfw": (1, 25, 25),
    "digits": (1, 8, 8),
    "folder": (3, 20, 20),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "synthetic": (3, 32, 32),
}


def test_every_registered_dataset_has_a_shape_check() -> None:
    assert set(DATASETS.names()) == set(NATIVE_SHAPES)


@pytest.mark.parametrize("name", sorted(NATIVE_SHAPES))
def test_batch_shapes_ranges_and_labels(name: str, data_roots: dict[str, Path]) -> None:
    if name == "fashion-mnist" and not FASHION_AVAILABLE:
        pytest.skip("Debian package dataset-fashion-mnist is not installed")

    batch = load_batch(name, batch_size=3, seed=1, root=data_roots.get(name))

    assert batch.images.shape == (3, *NATIVE_SHAPES[name])
    assert batch.images.dtype == torch.float32
    assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0
    assert batch.labels.dtype == torch.long and batch.labels.shape == (3,)
    assert bool(((batch.labels >= 0) & (batch.labels < batch.num_classes)).all())
    assert len(set(batch.indices)) == 3
    assert batch.split == "test" and batch.name == name


@pytest.mark.parametrize("name", ["photos", "lfw", "synthetic"])
def test_unlabelled_sets_get_index_mod_num_classes(name: str) -> None:
    batch = load_batch(name, batch_size=3, indices=[0, 4, 9], num_classes=4)

    assert batch.labels.tolist() == [0, 0, 1]
    assert batch.num_classes == 4


def test_same_seed_same_batch_and_other_seed_other_batch() -> None:
    first = load_batch("lfw", batch_size=5, seed=7)
    again = load_batch("lfw", batch_size=5, seed=7)
    other = load_batch("lfw", batch_size=5, seed=8)

    assert first.indices == again.indices
    assert torch.equal(first.images, again.images)
    assert first.indices != other.indices


@pytest.mark.parametrize("seed", range(5))
def test_unique_labels_never_repeat(seed: int) -> None:
    batch = load_batch("digits", batch_size=10, seed=seed, unique_labels=True)

    assert sorted(batch.labels.tolist()) == list(range(10))


def test_unique_labels_limits() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        load_batch("digits", batch_size=11, unique_labels=True)
    with pytest.raises(ConfigError, match="repeat a label"):
        load_batch("digits", batch_size=2, indices=[0, 10], unique_labels=True)


def test_indices_are_used_in_the_order_given() -> None:
    full = build_dataset("lfw").load()

    batch = load_batch("lfw", batch_size=3, indices=[42, 3, 17])

    assert batch.indices == [42, 3, 17]
    assert torch.equal(batch.images, full.images[[42, 3, 17]])
    assert isinstance(full, ImageSet) and len(full) == 100


def test_index_errors() -> None:
    with pytest.raises(ConfigError, match="index 100 is out of range"):
        load_batch("lfw", batch_size=1, indices=[100])
    with pytest.raises(ConfigError, match="out of range"):
        load_batch("lfw", batch_size=1, indices=[-1])
    with pytest.raises(ConfigError, match="exactly batch_size"):
        load_batch("lfw", batch_size=2, indices=[1])
    with pytest.raises(ConfigError, match="exceeds"):
        load_batch("lfw", batch_size=101)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'.*known: cifar10, cifar100, digits"):
        load_batch("mnist", batch_size=1)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="split 'val'"):
        load_batch("digits", batch_size=1, split="val")
    with pytest.raises(ConfigError, match="takes no root"):
        load_batch("photos", batch_size=1, root="/somewhere")
    with pytest.raises(ConfigError, match="10 classes"):
        load_batch("digits", batch_size=1, num_classes=5)
    with pytest.raises(ConfigError, match="channels"):
        load_batch("lfw", batch_size=1, channels=2)
    with pytest.raises(ConfigError, match="batch_size"):
        load_batch("lfw", batch_size=0)


def test_resize_and_channel_conversion() -> None:
    grey = load_batch("lfw", batch_size=2, indices=[0, 1])
    rgb = load_batch("lfw", batch_size=2, indices=[0, 1], image_size=32, channels=3)
    photo = load_batch("photos", batch_size=1, indices=[0])
    photo_grey = load_batch("photos", batch_size=1, indices=[0], channels=1)

    assert rgb.images.shape == (2, 3, 32, 32)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])
    assert abs(float(rgb.images.mean()) - float(grey.images.mean())) < 0.02
    luminance = 0.299 * photo.images[:, 0] + 0.587 * photo.images[:, 1] + 0.114 * photo.images[:, 2]
    assert photo_grey.images.shape == (1, 1, 32, 32)
    torch.testing.assert_close(photo_grey.images[:, 0], luminance)


def test_photo_order_is_fixed_and_crops_are_centred() -> None:
    import skimage.data

    photos = load_batch("photos", batch_size=2, indices=[0, 1], image_size=48)
    astronaut = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255

    assert PHOTO_ORDER[:2] == ("astronaut", "chelsea") and len(PHOTO_ORDER) == 11
    assert Photos().photo_names == PHOTO_ORDER
    assert photos.images.shape == (2, 3, 48, 48)
    torch.testing.assert_close(photos.images[:1], square_crop(astronaut, 48))


def test_square_crop_keeps_the_centre() -> None:
    image = torch.zeros(1, 1, 10, 20)
    image[..., 5:15] = 1.0

    crop = square_crop(image, 10)

    assert crop.shape == (1, 1, 10, 10)
    assert bool((crop == 1.0).all())


def test_synthetic_is_deterministic_and_smooth() -> None:
    first = load_batch("synthetic", batch_size=2, indices=[3, 4], image_size=16, channels=1)
    again = load_batch("synthetic", batch_size=2, indices=[3, 4], image_size=16, channels=1)

    assert first.images.shape == (2, 1, 16, 16)
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images[0], first.images[1])
    step = (first.images[..., 1:] - first.images[..., :-1]).abs().mean()
    assert float(step) < 0.1


def test_default_normalization() -> None:
    assert default_normalization("fashion-mnist", 1) == ((0.2860,), (0.3530,))
    assert default_normalization("fashion-mnist", 3) == ((0.2860,) * 3, (0.3530,) * 3)
    assert default_normalization("photos", 3) == ((0.5,) * 3, (0.5,) * 3)


# --- Fashion-MNIST -----------------------------------------------------------------------------------


@needs_fashion
def test_fashion_mnist_test_split_from_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDINVERT_DATA", raising=False)

    test = FashionMNIST().load()
    first = load_batch("fashion-mnist", batch_size=1, indices=[0])

    assert test.images.shape == (10_000, 1, 28, 28)
    assert int(test.labels[0]) == 9 and first.labels.tolist() == [9]
    assert np.bincount(test.labels.numpy()).tolist() == [1000] * 10
    assert torch.equal(first.images, test.images[:1])


def test_fashion_mnist_from_root_and_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = write_fashion(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("FEDINVERT_DATA", str(tmp_path / "data"))

    from_env = load_batch("fashion-mnist", batch_size=2, indices=[5, 1])
    from_root = load_batch("fashion-mnist", batch_size=2, indices=[5, 1], root=tmp_path / "data" / "fashion-mnist")

    expected = torch.from_numpy(images[[5, 1]]).float()[:, None] / 255
    for batch in (from_env, from_root):
        assert batch.labels.tolist() == labels[[5, 1]].tolist()
        torch.testing.assert_close(batch.images, expected)


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist.*FEDINVERT_DATA"):
        load_batch("fashion-mnist", batch_size=1, root=tmp_path)


def test_corrupt_idx_is_a_clear_error(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    wrong_magic = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(wrong_magic, np.zeros((6, 2, 2)), magic=IDX_IMAGES_MAGIC)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(gzip.compress(IDX_LABELS_MAGIC.to_bytes(4, "big") + (9).to_bytes(4, "big") + b"\x01"))
    not_gzip = tmp_path / "garbage.gz"
    not_gzip.write_bytes(b"this is not gzip")

    with pytest.raises(DataNotFoundError, match="magic number") as info:
        load_batch("fashion-mnist", batch_size=1, root=tmp_path)
    with pytest.raises(DataNotFoundError, match="header promises"):
        read_idx(truncated, magic=IDX_LABELS_MAGIC)
    with pytest.raises(DataNotFoundError, match="cannot be read"):
        read_idx(not_gzip, magic=IDX_LABELS_MAGIC)
    assert "\n" not in str(info.value)


# --- CIFAR and the restricted unpickler --------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_fake_batches_round_trip(tmp_path: Path, protocol: int) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train = [
        write_cifar_batch(folder / f"data_batch_{i}", count=2, label_key=b"labels", offset=i, protocol=protocol)
        for i in range(1, 6)
    ]
    write_cifar_batch(folder / "test_batch", count=3, label_key=b"labels", offset=0, protocol=protocol)

    batch = load_batch("cifar10", batch_size=2, indices=[9, 0], split="train", root=tmp_path)

    expected = torch.from_numpy(np.concatenate(train)[[9, 0]].reshape(2, 3, 32, 32)).float() / 255
    torch.testing.assert_close(batch.images, expected)
    assert batch.labels.tolist() == [(5 + 1) % 10, 1]
    assert build_dataset("cifar10", root=tmp_path).size(split="train") == 10


def test_cifar100_uses_fine_labels_and_fedinvert_data(
    data_roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDINVERT_DATA", str(data_roots["cifar100"]))

    batch = load_batch("cifar100", batch_size=4, indices=[0, 1, 2, 3])

    assert batch.labels.tolist() == [2, 3, 4, 5]
    assert batch.num_classes == 100


def test_cifar_missing_says_where_to_put_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDINVERT_DATA", raising=False)

    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py.*FEDINVERT_DATA"):
        load_batch("cifar10", batch_size=1)
    with pytest.raises(DataNotFoundError, match="cifar-100-python"):
        load_batch("cifar100", batch_size=1, root=tmp_path)


def test_restricted_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # protocol 0 by hand: push os.system, a one-element tuple holding the command, call it (REDUCE)
    payload = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload)

    with pytest.raises(pickle.UnpicklingError, match="forbidden global 'os.system'"):
        restricted_loads(payload)
    with pytest.raises(DataNotFoundError, match="forbidden global 'os.system'"):
        load_batch("cifar10", batch_size=1, root=tmp_path)
    assert not marker.exists()


def python2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """What Python 2's cPickle (protocol 2) writes for {'data': uint8 array, 'labels': [...]}, as in CIFAR.

    Python 2 strings are SHORT_BINSTRING ('U'), and arrays refer to ``numpy.core.multiarray._reconstruct``.
    """

    def string(raw: bytes) -> bytes:
        return b"U" + bytes([len(raw)]) + raw

    def small_int(value: int) -> bytes:  # BININT1 below 256, BININT2 below 65536
        return b"K" + bytes([value]) if value < 256 else b"M" + value.to_bytes(2, "little")

    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + small_int(0) + b"\x85" + string(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
        + b"(" + small_int(1) + small_int(data.shape[0]) + small_int(data.shape[1]) + b"\x86"  # state: version, shape
        + b"cnumpy\ndtype\n" + string(b"u1") + small_int(0) + small_int(1) + b"\x87R"  # dtype('u1', 0, 1)
        + b"(" + small_int(3) + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + small_int(0) + b"tb"
        + b"\x89" + b"T" + len(data.tobytes()).to_bytes(4, "little") + data.tobytes() + b"tb"  # not Fortran, raw bytes
    )
    label_list = b"](" + b"".join(small_int(label) for label in labels) + b"e"
    return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list + b"u."


def test_restricted_unpickler_reads_python2_cifar_pickles(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, size=(2, 3072), dtype=np.uint8)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(python2_cifar_pickle(data, [3, 7]))

    batch = load_batch("cifar10", batch_size=2, indices=[1, 0], root=tmp_path)

    assert batch.labels.tolist() == [7, 3]
    torch.testing.assert_close(batch.images, torch.from_numpy(data[[1, 0]].reshape(2, 3, 32, 32)).float() / 255)


def test_restricted_unpickler_allows_plain_data() -> None:
    data = {"a": [1, 2.5, "x", b"y"], "b": np.arange(6, dtype=np.uint8).reshape(2, 3)}

    for protocol in (2, 4, 5):
        loaded = restricted_loads(pickle.dumps(data, protocol=protocol))
        assert loaded["a"] == data["a"]
        assert np.array_equal(loaded["b"], data["b"])
    with pytest.raises(pickle.UnpicklingError, match="forbidden global"):
        restricted_loads(pickle.dumps(Path("x")))


# --- ImageFolder --------------------------------------------------------------------------------------


def test_folder_classes_sorted_and_images_cropped(data_roots: dict[str, Path]) -> None:
    dataset = build_dataset("folder", root=data_roots["folder"])

    whole = dataset.load()
    resized = load_batch("folder", batch_size=3, indices=[0, 1, 2], image_size=8, root=data_roots["folder"])

    assert dataset.classes == ("bird", "cat")
    assert whole.labels.tolist() == [0, 1, 1]
    # the first file (bird/0.png, 20×20) sets the size without image_size
    assert whole.images.shape == (3, 3, 20, 20)
    torch.testing.assert_close(whole.images[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert resized.images.shape == (3, 3, 8, 8)


def test_folder_of_grey_images_stays_grey(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("L", (12, 12), 128).save(tmp_path / "a" / "x.png")
    Image.new("L", (16, 12), 64).save(tmp_path / "b" / "y.jpg")

    batch = load_batch("folder", batch_size=2, indices=[0, 1], root=tmp_path)

    assert batch.images.shape == (2, 1, 12, 12)
    assert abs(float(batch.images[0].mean()) - 128 / 255) < 1e-6


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_batch("folder", batch_size=1, root=tmp_path / "missing")
    with pytest.raises(DataNotFoundError, match="has no images"):
        load_batch("folder", batch_size=1, root=tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataNotFoundError, match="no images"):
        load_batch("folder", batch_size=1, root=tmp_path)
    with pytest.raises(ConfigError, match="needs dataset.root"):
        load_batch("folder", batch_size=1)


@needs_fashion
@pytest.mark.parametrize("shared", [0, 2, 3, 4])
def test_shared_labels_draws_exactly_that_many_of_one_label(shared: int) -> None:
    for seed in range(4):
        batch = load_batch("fashion-mnist", batch_size=4, seed=seed, shared_labels=shared)
        counts = sorted(np.unique(batch.labels.numpy(), return_counts=True)[1].tolist(), reverse=True)
        assert counts == ([1, 1, 1, 1] if shared == 0 else [shared] + [1] * (4 - shared)), (seed, counts)
        assert len(set(batch.indices)) == 4


@needs_fashion
def test_shared_labels_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="0 \\(no label repeats\\) or 2..batch_size"):
        load_batch("fashion-mnist", batch_size=4, seed=0, shared_labels=1)
    with pytest.raises(ConfigError, match="0 \\(no label repeats\\) or 2..batch_size"):
        load_batch("fashion-mnist", batch_size=4, seed=0, shared_labels=5)
    with pytest.raises(ConfigError, match="too few"):
        load_batch("fashion-mnist", batch_size=11, seed=0, shared_labels=0)
    with pytest.raises(ConfigError, match="without dataset.indices"):
        load_batch("fashion-mnist", batch_size=2, seed=0, shared_labels=2, indices=[0, 1])


def test_dataset_batch_is_a_fixed_layout_of_disjoint_batches() -> None:
    from fedinvert.data.loader import layout_indices

    first = [load_batch("photos", batch_size=1, batch=k, seed=k).indices for k in range(11)]
    assert sorted(i for b in first for i in b) == list(range(11))  # 11 photos: 11 disjoint batches of 1
    assert load_batch("photos", batch_size=1, batch=3, seed=0).indices == first[3]  # whatever the run's seed
    labels = np.arange(40) % 10
    batches = [layout_indices(labels, batch_size=4, batch=k, num_classes=10, unique_labels=True) for k in range(8)]
    assert all(len(set(labels[b])) == 4 for b in batches)
    assert len({int(i) for b in batches for i in b}) == 32
    with pytest.raises(ConfigError, match="too few images for 11"):
        layout_indices(labels, batch_size=4, batch=10, num_classes=10)
    with pytest.raises(ConfigError, match="without dataset.indices"):
        load_batch("photos", batch_size=1, batch=0, indices=[2])
    with pytest.raises(ConfigError, match="integer >= 0"):
        load_batch("photos", batch_size=1, batch=-1)


@given(size=st.integers(0, 60), excluded=st.lists(st.integers(-5, 70), max_size=20))
def test_indices_without_the_private_ones_match_setdiff1d(size: int, excluded: list[int]) -> None:
    from fedinvert.data.loader import _without

    kept = _without(size, excluded)
    expected = np.setdiff1d(np.arange(size, dtype=np.int64), np.asarray(excluded, dtype=np.int64))
    assert kept.dtype == np.int64 and np.array_equal(kept, expected)
