"""Decoded photo crops are kept on disk and read back bit for bit; a damaged entry is rebuilt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedinvert.data import photos


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDINVERT_CACHE", str(tmp_path))
    photos._crops.cache_clear()
    yield tmp_path / "photos"
    photos._crops.cache_clear()


def fresh(size: int) -> torch.Tensor:
    from fedinvert.data.transforms import square_crop, to_tensor

    return torch.cat([square_crop(to_tensor(photos.read_photo(n)[None], channels_last=True), size)
                      for n in photos.PHOTO_ORDER])


def test_cached_crops_equal_fresh_ones(cache: Path) -> None:
    first = photos._crops(24)
    (entry,) = cache.glob("crops-24-*.npy")
    photos._crops.cache_clear()
    again = photos._crops(24)  # read from the file
    assert torch.equal(first, fresh(24)) and torch.equal(again, first)
    assert np.load(entry, allow_pickle=False).shape == (len(photos.PHOTO_ORDER), 3, 24, 24)
    assert not list(cache.glob(".*"))  # no scratch file left behind


def test_a_damaged_entry_is_rebuilt(cache: Path) -> None:
    photos._crops(16)
    (entry,) = cache.glob("crops-16-*.npy")
    entry.write_bytes(b"not an array")
    photos._crops.cache_clear()
    assert torch.equal(photos._crops(16), fresh(16))
    np.save(entry, np.zeros((2, 3, 16, 16), dtype=np.float32))  # a wrong shape is not trusted either
    photos._crops.cache_clear()
    assert torch.equal(photos._crops(16), fresh(16))


def test_an_unwritable_cache_still_gives_the_crops(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("FEDINVERT_CACHE", str(blocker))  # a file where the folder should be
    assert torch.equal(photos._crops(16), fresh(16))
