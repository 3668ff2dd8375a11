"""fedinvert.cache: safetensors entries written whole or not at all."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedinvert.cache import save_tensors


def test_an_entry_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "entries" / "one.safetensors"
    save_tensors(path, {"w": torch.arange(6.0).reshape(2, 3)}, {"note": "kept"})
    assert torch.equal(load_file(str(path))["w"], torch.arange(6.0).reshape(2, 3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["one.safetensors"]
    with pytest.raises(ValueError):  # safetensors refuses a non-contiguous tensor mid-write
        save_tensors(path, {"w": torch.zeros(3, 2).t()})
    assert sorted(p.name for p in path.parent.iterdir()) == ["one.safetensors"]  # no temporary file left
    assert torch.equal(load_file(str(path))["w"], torch.arange(6.0).reshape(2, 3))  # the old entry intact
