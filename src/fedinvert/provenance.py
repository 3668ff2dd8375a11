"""Where every weight and data file fedinvert reads comes from: source, licence, checksum, the command that made it.

`fedinvert list priors|datasets|models|metrics --details` prints `describe(kind)`; the documentation's
provenance page is `markdown()` of the same records (the docs build calls it), so the two cannot disagree.
Checksums are the SHA-256 of the files as they are on this machine, computed when asked (cached per file
version); a file that is not installed is reported with how to install it, never as an error.

For our own weights (the ``fashion`` prior and the Fashion-MNIST classifier) the training command, the code
revision and the training data's checksums come from the JSON written beside the weights.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedinvert.errors import DataNotFoundError

#: The kinds of `fedinvert list` that read files, in the order ``--details`` prints them.
DETAIL_KINDS = ("priors", "datasets", "models", "metrics")

FEDINVERT_LICENCE = "MIT (fedinvert)"
#: First words of a recorded command line (shown as code in the docs); other ``made_by`` lines are prose.
COMMANDS = ("fedinvert", "python", "pip")
FASHION_INSTALL = "apt-get install dataset-fashion-mnist, or set FEDINVERT_DATA to a folder holding the files"


@dataclass(frozen=True)
class FileRecord:
    """One file: its name, where it is on this machine (None: not installed) and its SHA-256.

    ``missing`` is the line that says how to install an absent file; ``source`` and ``licence`` are set when
    they differ from the entry's (the photos each have their own).
    """

    name: str
    path: Path | None = None
    sha256: str | None = None
    size: int | None = None
    missing: str | None = None
    source: str | None = None
    licence: str | None = None


@dataclass(frozen=True)
class Provenance:
    """Where one registered (or bundled) prior, data set, model or metric gets its files.

    Attributes:
        source: who made the files and which package or path they come from.
        licence: the licence of the files (and of the data they were made from, where known).
        kind: one of `DETAIL_KINDS` (filled in from the registry for registered entries).
        name: the registered name (or, for a bundled file outside the registries, its own name).
        what: one line saying what it is (default: the first paragraph of the registered class's docstring).
        files: the files read, each with its checksum; empty when the entry reads none.
        no_files: why there are no files (e.g. "none bundled: pass prior.weights=PATH"); None when there are.
        made_by: the commands that made the files (our own weights), or who made them.
        install: how the files get onto a machine.
        code_revision: the fedinvert revision the files were made with, as recorded (our own weights only).
        data: SHA-256 of the data the files were trained on, file name -> checksum (our own weights only).
        note: anything else a reader needs (e.g. that a revision was recorded after the fact).
    """

    source: str
    licence: str
    kind: str = ""
    name: str = ""
    what: str = ""
    files: tuple[FileRecord, ...] = ()
    no_files: str | None = None
    made_by: tuple[str, ...] = ()
    install: str | None = None
    code_revision: str | None = None
    data: dict[str, str] = field(default_factory=dict)
    note: str | None = None


# -- files and checksums -------------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes as 64 hex digits, cached per file version (path, mtime, size)."""
    stat = Path(path).stat()
    return _sha256_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(
    name: str, locate: Callable[[], Path], *, install: str, source: str | None = None, licence: str | None = None
) -> FileRecord:
    """A `FileRecord` for the file ``locate()`` returns; ``missing`` says ``install`` when it raises
    `DataNotFoundError` or returns a path that is not a file."""
    try:
        path = locate()
    except DataNotFoundError:
        return FileRecord(name=name, missing=f"not installed: {install}", source=source, licence=licence)
    if not path.is_file():
        return FileRecord(
            name=name, missing=f"not installed ({path} is absent): {install}", source=source, licence=licence
        )
    return FileRecord(
        name=name, path=path, sha256=sha256_file(path), size=path.stat().st_size, source=source, licence=licence
    )


def package_file(package: str, relative: str) -> Callable[[], Path]:
    """A locator of ``relative`` inside the installed Python package ``package`` (found, not imported)."""

    def locate() -> Path:
        spec = importlib.util.find_spec(package)
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        if not folders:
            raise DataNotFoundError(f"the Python package {package} is not installed")
        return Path(folders[0]) / relative

    return locate


def data_checksums(paths: Sequence[Path]) -> dict[str, str]:
    """File name -> SHA-256 of each of ``paths``: what a training run records about the data it read."""
    return {Path(path).name: sha256_file(path) for path in paths}


def fashion_checksums(*splits: str) -> dict[str, str]:
    """`data_checksums` of the Fashion-MNIST IDX files of ``splits`` that `FashionMNIST` reads now.

    Raises:
        DataNotFoundError: the files are not installed.
    """
    from fedinvert.data.fashion_mnist import FashionMNIST

    data = FashionMNIST()
    return data_checksums([path for split in splits for path in data.files(split=split)])


def code_revision() -> str | None:
    """The git commit of the fedinvert source tree this module runs from, ``+dirty`` when tracked files have
    uncommitted changes; None outside a git checkout (an installed wheel) or without git."""
    here = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if changes else head


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _first_line(obj: object) -> str:
    """The first paragraph of ``obj``'s docstring as one line, without its final full stop."""
    paragraph = (getattr(obj, "__doc__", None) or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split()).rstrip(".")


# -- our own weights: their JSON ---------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _own_weights(
    *, source: str, weights: Path, metadata: Path, commands: list[Any], licence: str, kind: str = "",
    name: str = "", what: str = "",
) -> Provenance:
    """The record of weights we trained: files, command lines, code revision and data checksums from the JSON."""
    meta = _read_json(metadata)
    hint = "reinstall fedinvert (the weights are package data)"
    revisions = [r for r in (meta.get("code_revisions") or [meta.get("code_revision")]) if r]
    if meta.get("export_code_revision"):
        revisions.append(f"{meta['export_code_revision']} (export)")
    revision = ", ".join(dict.fromkeys(revisions)) or "not recorded by the run"
    if meta.get("committed_in"):
        revision += f"; the weights were committed in {meta['committed_in']}"
    return Provenance(
        kind=kind,
        name=name,
        what=what,
        source=source,
        licence=licence,
        files=(
            file_record(weights.name, lambda: weights, install=hint),
            file_record(metadata.name, lambda: metadata, install=hint),
        ),
        made_by=tuple(shlex.join(str(part) for part in command) for command in commands if command),
        install="package data of fedinvert",
        code_revision=revision,
        data={str(k): str(v) for k, v in (meta.get("data_sha256") or {}).items()},
        note="; ".join(str(meta[key]) for key in ("note", "provenance_note") if meta.get(key)) or None,
    )


# -- the entries, kind by kind ---------------------------------------------------------------------------------
def _priors() -> list[Provenance]:
    from fedinvert.priors import PRIORS
    from fedinvert.priors.dcgan import WHEEL, wheel_weights_path
    from fedinvert.priors.fashion import METADATA_FILE, WEIGHTS_FILE

    fashion_meta = _read_json(METADATA_FILE)
    fashion_commands = list(fashion_meta.get("training_commands") or [])
    fashion_commands.append(fashion_meta.get("export_command"))
    not_bundled = "none bundled: pass prior.weights=PATH to a local checkpoint (fedinvert never downloads)"
    entries = {
        "face-dcgan": Provenance(
            source=(
                f"the PyPI wheel {WHEEL} (Chien Liu, DCGAN-PyTorch): a DCGAN its author trained on DigiFace-1M,"
                " Microsoft's synthetic faces"
            ),
            licence="MIT (the wheel's LICENSE); DigiFace-1M's own terms not checked",
            files=(
                file_record(
                    "gan_face_generate/weights.tar", wheel_weights_path,
                    install=f"pip install --no-deps {WHEEL} (make face-gan)",
                ),
            ),
            made_by=("its author's training (gan_face_generate/train.py in the wheel; not run here)",),
            install=f"pip install --no-deps {WHEEL} (make face-gan)",
        ),
        "fashion": _own_weights(
            source="trained here by `fedinvert train-prior` on the Fashion-MNIST train split (padded to 32×32)",
            weights=WEIGHTS_FILE,
            metadata=METADATA_FILE,
            commands=fashion_commands,
            licence=f"{FEDINVERT_LICENCE}; trained on Fashion-MNIST (MIT, Zalando SE)",
        ),
        "biggan": Provenance(
            source=(
                "BigGAN-deep (Brock et al., 2019): the pytorch-pretrained-biggan checkpoints (Hugging Face),"
                " converted from DeepMind's TF-Hub modules"
            ),
            licence="not bundled; DeepMind's TF-Hub BigGAN-deep modules are Apache-2.0 (check your copy's terms)",
            no_files=not_bundled,
        ),
        "stylegan2": Provenance(
            source="StyleGAN2 (Karras et al., 2020): NVIDIA's checkpoints in the layout of rosinality's stylegan2-pytorch",
            licence="not bundled; NVIDIA's StyleGAN2 weights are under the NVIDIA Source Code License-NC (non-commercial)",
            no_files=not_bundled,
        ),
    }
    return _in_registry_order("priors", PRIORS, entries)


# Photo name -> (source, licence), as the packages state them (skimage.data docstrings, sklearn's images README).
PHOTO_TERMS: dict[str, tuple[str, str]] = {
    "astronaut": ("NASA Great Images (Eileen Collins)", "public domain (no known copyright restrictions)"),
    "chelsea": ("Stefan van der Walt", "CC0"),
    "coffee": ("Rachel Michetti (Pikolo Espresso Bar)", "CC0"),
    "rocket": ("SpaceX (DSCOVR launch on Falcon 9)", "public domain"),
    "hubble_deep_field": ("NASA, HubbleSite", "public domain"),
    "immunohistochemistry": ("Center for Microscopy And Molecular Imaging (CMMI)", "no known copyright restrictions"),
    "retina": ("Mikael Häggström, Wikimedia Commons", "CC0 1.0"),
    "motorcycle": ("Middlebury 2014 stereo benchmark (Scharstein et al.)", "not stated in scikit-image"),
    "china": ("Flickr user danielbuechele", "CC BY 2.0"),
    "flower": ("Flickr user vultilion", "CC BY 2.0"),
    "grace_hopper": ("US Navy portrait in matplotlib's sample data", "not stated in matplotlib"),
}


def _datasets() -> list[Provenance]:
    from fedinvert.data import DATASETS
    from fedinvert.data.fashion_mnist import FILES, FashionMNIST
    from fedinvert.data.photos import PHOTO_FILES, photo_path

    def fashion_file(split: str, position: int) -> Callable[[], Path]:
        return lambda: FashionMNIST().files(split=split)[position]

    fashion_files = tuple(
        file_record(f"{stem}.gz", fashion_file(split, position), install=FASHION_INSTALL)
        for split, stems in FILES.items()
        for position, stem in enumerate(stems)
    )
    wheels = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}

    def photo(name: str) -> FileRecord:
        package, relative = PHOTO_FILES[name]
        source, licence = PHOTO_TERMS[name]
        wheel = wheels[package]
        return file_record(
            f"{package}/{relative}", lambda: photo_path(name), install=f"pip install {wheel}",
            source=f"{source}; in the {wheel} {_version(wheel)} wheel", licence=licence,
        )

    skimage, sklearn = f"scikit-image {_version('scikit-image')}", f"scikit-learn {_version('scikit-learn')}"
    entries = {
        "fashion-mnist": Provenance(
            source=(
                "Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, Zalando Research), the IDX files of the Debian package"
                " dataset-fashion-mnist (or $FEDINVERT_DATA, dataset.root)"
            ),
            licence="MIT (Expat), Zalando SE (the Debian package's copyright file)",
            files=fashion_files,
            install=f"{FASHION_INSTALL} (make data)",
        ),
        "photos": Provenance(
            source="photos bundled in the scikit-image, scikit-learn and matplotlib wheels (each file's source below)",
            licence="each photo's own, as its package states it (below)",
            files=tuple(photo(name) for name in PHOTO_FILES),
            install="with fedinvert's dependencies scikit-image, scikit-learn and matplotlib",
        ),
        "lfw": Provenance(
            source=(
                f"Labeled Faces in the Wild (Huang et al., 2007, UMass Amherst): the 25×25 crops of {skimage}'s"
                " lfw_subset (its first 100 images)"
            ),
            licence="not stated in scikit-image (a BSD-3-Clause package); LFW's images are news photos from the web",
            files=(
                file_record(
                    "skimage/data/lfw_subset.npy", package_file("skimage", "data/lfw_subset.npy"),
                    install="pip install scikit-image",
                ),
            ),
            install="with fedinvert's dependency scikit-image",
        ),
        "digits": Provenance(
            source=(
                "the test set of UCI's Optical Recognition of Handwritten Digits (Alpaydin & Kaynak, 1998), in the"
                f" {sklearn} wheel"
            ),
            licence="not stated in scikit-learn (a BSD-3-Clause package)",
            files=(
                file_record(
                    "sklearn/datasets/data/digits.csv.gz", package_file("sklearn", "datasets/data/digits.csv.gz"),
                    install="pip install scikit-learn",
                ),
            ),
            install="with fedinvert's dependency scikit-learn",
        ),
        "cifar10": Provenance(
            source="CIFAR-10 (Krizhevsky, 2009): the python pickle batches from a local dataset.root",
            licence="not bundled; no licence stated by its authors",
            no_files="none bundled: dataset.root=DIR holding cifar-10-batches-py",
        ),
        "cifar100": Provenance(
            source="CIFAR-100 (Krizhevsky, 2009): the python pickle files from a local dataset.root",
            licence="not bundled; no licence stated by its authors",
            no_files="none bundled: dataset.root=DIR holding cifar-100-python",
        ),
        "folder": Provenance(
            source="your own images (dataset.root=DIR)",
            licence="yours",
            no_files="none bundled: the images under dataset.root",
        ),
        "synthetic": Provenance(
            source="generated by fedinvert from the run's seed",
            licence=FEDINVERT_LICENCE,
            no_files="none: made at run time",
        ),
    }
    return _in_registry_order("datasets", DATASETS, entries)


def _models() -> list[Provenance]:
    from fedinvert.models import MODELS
    from fedinvert.priors.fashion import WEIGHTS_DIR
    from fedinvert.priors.quality import CLASSIFIER_FILE

    victim = (
        "none: initialised from the run's seed; model.checkpoint=FILE loads a safetensors state dict,"
        " model.pretrain_epochs=N trains it on the data set (cached under $FEDINVERT_CACHE/victims/)"
    )
    entries = {
        name: Provenance(
            source="fedinvert's own definition of the architecture",
            licence=FEDINVERT_LICENCE,
            no_files=victim,
        )
        for name in MODELS.names()
    }
    metadata = WEIGHTS_DIR / "fashion_classifier.json"
    classifier = _own_weights(
        kind="models",
        name="fashion-classifier",
        what="the Fashion-MNIST classifier that scores the fashion prior (not a victim; benchmarks/prior_quality.py)",
        source=(
            "trained here by benchmarks/train_fashion_classifier.py on the Fashion-MNIST train split (padded to"
            " 32×32), scored on the test split"
        ),
        weights=CLASSIFIER_FILE,
        metadata=metadata,
        commands=[_read_json(metadata).get("command")],
        licence=f"{FEDINVERT_LICENCE}; trained on Fashion-MNIST (MIT, Zalando SE)",
    )
    return [*_in_registry_order("models", MODELS, entries), classifier]


def _metrics() -> list[Provenance]:
    from fedinvert.metrics import METRICS
    from fedinvert.perceptual import ST_LPIPS_FILE

    entries = {
        name: Provenance(
            source="computed by fedinvert" + (" with pytorch-msssim" if name == "ssim" else ""),
            licence=FEDINVERT_LICENCE + ("; pytorch-msssim MIT" if name == "ssim" else ""),
            no_files="none: computed",
        )
        for name in METRICS.names()
    }
    extra = [
        Provenance(
            kind="metrics",
            name="st_lpips",
            what="ST-LPIPS (Ghildyal & Liu, 2022), metrics.json's st_lpips; fedinvert reads the weights only",
            source="the shift-tolerant AlexNet of the PyPI wheel stlpips-pytorch 0.0.2 (Ghildyal & Liu)",
            licence="BSD-2-Clause (the wheel's LICENSE)",
            files=(
                file_record(
                    f"stlpips_pytorch/{ST_LPIPS_FILE}", package_file("stlpips_pytorch", ST_LPIPS_FILE),
                    install="pip install --no-deps stlpips-pytorch==0.0.2 (make setup)",
                ),
            ),
            made_by=("its authors' training (not run here)",),
            install="pip install --no-deps stlpips-pytorch==0.0.2 (make setup)",
        ),
        Provenance(
            kind="metrics",
            name="lpips",
            what="LPIPS (Zhang et al., 2018), metrics.json's lpips, from weights you supply",
            source="your local LPIPS AlexNet/VGG-16 weights (metrics.lpips_weights=PATH)",
            licence="not bundled; the LPIPS weights of Zhang et al. are BSD-2-Clause",
            no_files="none bundled: metrics.lpips_weights=PATH (.pth or .safetensors)",
        ),
    ]
    return [*_in_registry_order("metrics", METRICS, entries), *extra]


def _in_registry_order(kind: str, registry: Any, entries: dict[str, Provenance]) -> list[Provenance]:
    """``entries`` in the registry's order, each with its kind, name and (unless given) the first paragraph of its
    class's docstring; a registered name without an entry still gets one, saying so."""
    unknown = Provenance(source="not recorded", licence="not recorded")
    return [
        replace(
            entries.get(name, unknown), kind=kind, name=name,
            what=entries.get(name, unknown).what or _first_line(registry.get(name)),
        )
        for name in registry.names()
    ]


_BUILDERS: dict[str, Callable[[], list[Provenance]]] = {
    "priors": _priors,
    "datasets": _datasets,
    "models": _models,
    "metrics": _metrics,
}


def describe(kind: str) -> list[Provenance]:
    """The provenance of every entry of ``kind`` (one of `DETAIL_KINDS`), checksums computed now.

    Raises:
        KeyError: ``kind`` is not one of `DETAIL_KINDS`.
    """
    return _BUILDERS[kind]()


# -- rendering -------------------------------------------------------------------------------------------------
def _file_line(record: FileRecord, *, full_path: bool) -> str:
    where = str(record.path) if full_path and record.path is not None else record.name
    if record.missing is not None:
        text = f"{record.name}  {record.missing}"
    else:
        text = f"{where}  sha256 {record.sha256}  {record.size:,} bytes"
    terms = "; ".join(part for part in (record.source, record.licence and f"licence {record.licence}") if part)
    return f"{text}  ({terms})" if terms else text


def format_details(kind: str) -> str:
    """`describe(kind)` as the text `fedinvert list KIND --details` prints (full paths, full checksums)."""
    lines = [f"{kind}:"]
    for entry in describe(kind):
        lines.append(f"  {entry.name}: {entry.what}")
        lines.append(f"    source:   {entry.source}")
        lines.append(f"    licence:  {entry.licence}")
        lines.extend(f"    file:     {_file_line(record, full_path=True)}" for record in entry.files)
        if entry.no_files:
            lines.append(f"    files:    {entry.no_files}")
        lines.extend(f"    made by:  {command}" for command in entry.made_by)
        if entry.install:
            lines.append(f"    install:  {entry.install}")
        if entry.code_revision:
            lines.append(f"    code:     {entry.code_revision}")
        lines.extend(f"    data:     {name}  sha256 {digest}" for name, digest in entry.data.items())
        if entry.note:
            lines.append(f"    note:     {entry.note}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """Every kind of `DETAIL_KINDS` as Markdown tables: the documentation's provenance page."""
    out = [
        "# Provenance of weights and data",
        "",
        "Every file fedinvert reads, where it comes from, its licence, its SHA-256 and what made it. This page is",
        "generated by `fedinvert.provenance` when the documentation is built, from the same records that",
        "`fedinvert list priors|datasets|models|metrics --details` prints; the checksums are those of the files",
        "on the machine that built it (a file it lacked says *not installed*).",
    ]
    for kind in DETAIL_KINDS:
        out += ["", f"## {kind.capitalize()}", "", "| name | what | source | licence | made by |", "|---|---|---|---|---|"]
        entries = describe(kind)
        for entry in entries:
            made = "<br>".join(f"`{_cell(c)}`" if c.split()[0] in COMMANDS else _cell(c) for c in entry.made_by)
            made = made or "—"
            if entry.code_revision:
                made += f"<br>code: {_cell(entry.code_revision)}"
            out.append(
                f"| `{entry.name}` | {_cell(entry.what)} | {_cell(entry.source)} | {_cell(entry.licence)} | {made} |"
            )
        out += ["", "| name | file | SHA-256 | bytes | source, licence |", "|---|---|---|---|---|"]
        for entry in entries:
            for record in entry.files:
                digest = f"`{record.sha256}`" if record.sha256 else _cell(record.missing or "")
                size = f"{record.size:,}" if record.size is not None else "—"
                terms = "; ".join(part for part in (record.source, record.licence) if part) or "as above"
                out.append(f"| `{entry.name}` | `{record.name}` | {digest} | {size} | {_cell(terms)} |")
            if entry.no_files:
                out.append(f"| `{entry.name}` | {_cell(entry.no_files)} | | | |")
            for name, digest in entry.data.items():
                out.append(f"| `{entry.name}` | training data `{name}` | `{digest}` | | |")
        notes = [entry for entry in entries if entry.note]
        if notes:
            out.append("")
            out += [f"- `{entry.name}`: {entry.note}" for entry in notes]
    return "\n".join(out) + "\n"


__all__ = [
    "DETAIL_KINDS",
    "FileRecord",
    "Provenance",
    "code_revision",
    "data_checksums",
    "describe",
    "fashion_checksums",
    "file_record",
    "format_details",
    "markdown",
    "package_file",
    "sha256_file",
]
