"""The folder data set: a flat folder, a single class folder and a labels.csv, and one clear line otherwise."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from fedinvert.cli import main
from fedinvert.data import build_dataset, load_batch
from fedinvert.errors import ConfigError, DataNotFoundError


def _image(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path)


def _first_pixel(dataset, index: int) -> float:
    return float(dataset.take([index]).images[0, 0, 0, 0])


def test_flat_folder_is_one_class_of_the_given_label_space(tmp_path: Path) -> None:
    for name, value in (("b.png", 20), ("a.png", 200), ("c.jpg", 90)):
        _image(tmp_path / name, value)

    dataset = build_dataset("folder", root=tmp_path, num_classes=10)

    assert dataset.num_classes == 10 and dataset.classes == ()
    assert dataset.labels().tolist() == [0, 0, 0]
    # sorted by name: a.png (200) first, then b.png (20)
    assert _first_pixel(dataset, 0) == pytest.approx(200 / 255)
    assert _first_pixel(dataset, 1) == pytest.approx(20 / 255)


def test_flat_folder_without_num_classes_asks_for_it(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", 10)
    with pytest.raises(ConfigError, match=r"no class folders .* set num_classes="):
        build_dataset("folder", root=tmp_path)
    with pytest.raises(ConfigError, match="at least 2 classes; set num_classes ≥ 2"):
        build_dataset("folder", root=tmp_path, num_classes=1)


def test_single_class_folder_is_label_zero(tmp_path: Path) -> None:
    _image(tmp_path / "cat" / "0.png", 10)
    _image(tmp_path / "cat" / "deeper" / "1.png", 30)

    dataset = build_dataset("folder", root=tmp_path, num_classes=4)

    assert dataset.classes == ("cat",) and dataset.num_classes == 4
    assert dataset.labels().tolist() == [0, 0]
    with pytest.raises(ConfigError, match="single class folder 'cat'"):
        build_dataset("folder", root=tmp_path)


def test_class_folders_may_sit_in_a_larger_label_space_but_not_a_smaller(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _image(tmp_path / name / "x.png", 50)
    assert build_dataset("folder", root=tmp_path).num_classes == 3
    assert build_dataset("folder", root=tmp_path, num_classes=7).num_classes == 7
    with pytest.raises(ConfigError, match="num_classes=2 is too small .* 3 class folders; set num_classes ≥ 3"):
        build_dataset("folder", root=tmp_path, num_classes=2)


def test_labels_csv_gives_files_order_and_labels(tmp_path: Path) -> None:
    _image(tmp_path / "imgs" / "p.png", 10)
    _image(tmp_path / "imgs" / "q.png", 100)
    _image(tmp_path / "unlisted.png", 250)
    (tmp_path / "labels.csv").write_text("filename,label\nimgs/q.png,3\n\nimgs/p.png,1\n")

    dataset = build_dataset("folder", root=tmp_path)
    batch = load_batch("folder", batch_size=2, indices=[0, 1], image_size=8, root=tmp_path)

    assert dataset.size() == 2  # the unlisted image is not part of it
    assert dataset.labels().tolist() == [3, 1]
    assert dataset.num_classes == 4
    assert _first_pixel(dataset, 0) == pytest.approx(100 / 255)
    assert batch.labels.tolist() == [3, 1] and batch.images.shape == (2, 3, 8, 8)


def test_labels_csv_without_header_and_of_one_label(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", 10)
    _image(tmp_path / "b.png", 20)
    (tmp_path / "labels.csv").write_text("a.png,0\nb.png,0\n")
    with pytest.raises(ConfigError, match="labels up to 0, but the victim needs at least 2 classes"):
        build_dataset("folder", root=tmp_path)
    assert build_dataset("folder", root=tmp_path, num_classes=2).labels().tolist() == [0, 0]


@pytest.mark.parametrize(
    ("rows", "error", "needle"),
    [
        ("a.png,cat\n", ConfigError, "line 1: label must be an integer ≥ 0, got 'cat'"),
        ("a.png,-1\n", ConfigError, "label must be an integer ≥ 0"),
        ("a.png\n", ConfigError, "line 1: expected 'filename,label'"),
        ("a.png,1\nmissing.png,0\n", DataNotFoundError, "line 2: .*missing.png is not an image file"),
        ("a.png,1\na.png,0\n", ConfigError, "line 2: 'a.png' is listed twice"),
        ("../outside.png,1\n", ConfigError, "must be a path inside"),
        ("filename,label\n", ConfigError, "lists no images"),
    ],
)
def test_bad_labels_csv_is_one_clear_error(tmp_path: Path, rows: str, error: type, needle: str) -> None:
    root = tmp_path / "root"
    _image(root / "a.png", 10)
    _image(tmp_path / "outside.png", 10)
    (root / "labels.csv").write_text(rows)
    with pytest.raises(error, match=needle):
        build_dataset("folder", root=root)


def test_loose_images_beside_class_folders_are_refused(tmp_path: Path) -> None:
    _image(tmp_path / "cat" / "0.png", 10)
    _image(tmp_path / "stray.png", 10)
    with pytest.raises(ConfigError, match=r"both images \(stray.png, ...\) and class folders \(cat, ...\)"):
        build_dataset("folder", root=tmp_path)


def test_empty_folder_and_oversized_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataNotFoundError, match="has no images"):
        build_dataset("folder", root=tmp_path)
    _image(tmp_path / "big.png", 10, size=(40, 40))
    # Pillow refuses more than twice its pixel limit as a decompression bomb: one line, not a traceback
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataNotFoundError, match="big.png cannot be read"):
        build_dataset("folder", root=tmp_path, num_classes=2)


def test_attack_my_own_flat_folder_from_the_command_line(tmp_path: Path, capsys, one_error_line) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / f"{i}.png")
    small = ["dataset=folder", f"dataset.root={root}", "model=lenet-dlg", "image_size=8", "attack=idlg",
             "attack.iterations=3", "attack.compile=false", "device=cpu", "progress=false"]

    assert main(["attack", *small, f"out={tmp_path / 'refused'}"]) == 2
    assert "set num_classes=" in one_error_line(capsys)
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "run"
    assert main(["attack", *small, "num_classes=10", f"out={out}"]) == 0
    tensors = load_file(str(out / "tensors.safetensors"))
    assert tensors["labels"].tolist() == [0]
    assert tensors["private"].shape == (1, 3, 8, 8)
