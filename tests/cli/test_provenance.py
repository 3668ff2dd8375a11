"""`fedinvert list KIND --details`: every registered prior, data set and model with its source, licence and the
SHA-256 of its files; absent files said plainly; the docs page rendered from the same records."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedinvert import provenance
from fedinvert.cli import main
from fedinvert.data import DATASETS
from fedinvert.models import MODELS
from fedinvert.priors import PRIORS
from fedinvert.priors.fashion import WEIGHTS_FILE

FILE_LINE = re.compile(r"^    file:     (?P<path>\S+)  sha256 (?P<sha>[0-9a-f]{64})  (?P<size>[\d,]+) bytes")


def _details(capsys: pytest.CaptureFixture[str], kind: str) -> str:
    code = main(["list", kind, "--details"])
    out = capsys.readouterr()
    assert code == 0 and out.err == ""
    return out.out


def _entry_blocks(text: str) -> dict[str, list[str]]:
    """Entry name -> its indented lines, from the printed details."""
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        header = re.match(r"^  (\S+): ", line)
        if header:
            current = blocks.setdefault(header.group(1), [])
        elif line.startswith("    "):
            current.append(line.strip())
    return blocks


@pytest.mark.parametrize(("kind", "registry"), [("priors", PRIORS), ("datasets", DATASETS), ("models", MODELS)])
def test_every_registered_entry_has_a_source_and_a_licence(capsys, kind, registry):
    blocks = _entry_blocks(_details(capsys, kind))
    assert set(registry.names()) <= set(blocks)
    for name in registry.names():
        fields = dict(line.split(":", 1) for line in blocks[name] if ":" in line)
        assert fields["source"].strip() and fields["source"].strip() != "not recorded", name
        assert fields["licence"].strip() and fields["licence"].strip() != "not recorded", name
        # either files with checksums (or a not-installed line) or a reason why there are none
        assert any(line.startswith(("file:", "files:")) for line in blocks[name]), name


def test_printed_checksums_are_hashlibs_of_the_files(capsys):
    text = "\n".join(_details(capsys, kind) for kind in provenance.DETAIL_KINDS)
    found = [match for line in text.splitlines() if (match := FILE_LINE.match(line))]
    paths = {Path(match["path"]) for match in found}
    assert WEIGHTS_FILE in paths  # our own prior's weights are always there (package data)
    for match in found:
        data = Path(match["path"]).read_bytes()
        assert match["sha"] == hashlib.sha256(data).hexdigest(), match["path"]
        assert int(match["size"].replace(",", "")) == len(data)


def test_our_prior_lists_its_training_command_and_data_checksums(capsys):
    fashion = _entry_blocks(_details(capsys, "priors"))["fashion"]
    made = [line for line in fashion if line.startswith("made by:")]
    assert any("fedinvert train-prior --out" in line and "--epochs 20" in line for line in made)
    assert any("--export-only" in line for line in made)
    code = next(line for line in fashion if line.startswith("code:"))
    assert "226bfc5f90758e3e8817bff9b44634e03d39e255" in code
    data = [line for line in fashion if line.startswith("data:")]
    assert [line.split()[1] for line in data] == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_a_missing_wheel_prints_a_clear_line(capsys, monkeypatch):
    monkeypatch.setattr("fedinvert.priors.dcgan._PACKAGE", "no_such_package_for_fedinvert")
    lines = [line for line in _entry_blocks(_details(capsys, "priors"))["face-dcgan"] if line.startswith("file:")]
    assert lines == [
        "file:     gan_face_generate/weights.tar  not installed: pip install --no-deps gan-face-generate==1.1.1"
        " (make face-gan)"
    ]


def test_missing_fashion_mnist_prints_one_line_per_file(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("FEDINVERT_DATA", raising=False)
    monkeypatch.setattr("fedinvert.data.fashion_mnist.SYSTEM_DIR", tmp_path)
    lines = [line for line in _entry_blocks(_details(capsys, "datasets"))["fashion-mnist"] if line.startswith("file:")]
    assert len(lines) == 4
    assert all("not installed: apt-get install dataset-fashion-mnist" in line for line in lines)
    assert lines[0].startswith("file:     train-images-idx3-ubyte.gz  not installed")


def test_a_file_absent_from_its_installed_package_is_named(capsys, monkeypatch):
    monkeypatch.setattr("fedinvert.perceptual.ST_LPIPS_FILE", "weights/vST0.0/absent.pth")
    lines = [line for line in _entry_blocks(_details(capsys, "metrics"))["st_lpips"] if line.startswith("file:")]
    assert len(lines) == 1 and "not installed (" in lines[0] and "absent.pth is absent)" in lines[0]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("foo", "error: list --details: 'foo' is not a kind; --details covers priors, datasets, models, metrics"),
        (
            "attacks",
            "error: list --details: 'attacks' has no weight or data files; --details covers priors, datasets, models,"
            " metrics",
        ),
    ],
)
def test_details_on_a_kind_without_files_exits_2_with_one_line(capsys, kind, message):
    code = main(["list", kind, "--details"])
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    assert out.err.splitlines() == [message]


def test_the_docs_page_shows_the_same_checksums(capsys):
    page = provenance.markdown()
    text = "\n".join(_details(capsys, kind) for kind in provenance.DETAIL_KINDS)
    checksums = set(re.findall(r"sha256 ([0-9a-f]{64})", text))
    assert checksums and checksums == set(re.findall(r"`([0-9a-f]{64})`", page))
    for kind in provenance.DETAIL_KINDS:
        for entry in provenance.describe(kind):
            assert f"| `{entry.name}` |" in page


def test_checksum_cache_follows_the_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"first")
    assert provenance.sha256_file(path) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"second, longer")
    assert provenance.sha256_file(path) == hashlib.sha256(b"second, longer").hexdigest()


def test_code_revision_is_the_checkouts_head():
    git = shutil.which("git")
    root = Path(provenance.__file__).resolve().parent
    if git is None or subprocess.run([git, "-C", str(root), "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    head = subprocess.run([git, "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    revision = provenance.code_revision()
    assert revision is not None and revision.removesuffix("+dirty") == head
