"""MkDocs hooks (mkdocs.yml ``hooks:``): pages made from the code and the committed results when the site is built.

* ``provenance.md``: `fedinvert.provenance.markdown()`, the same records `fedinvert list KIND --details` prints,
  so the page and the command cannot disagree.
* ``results/<study>/index.md`` for every study folder in ``docs/results/`` (listed under the nav's "Results"
  when mkdocs.yml does not name it): the command that made it (its
  ``sweep.log``), the tables (``report.txt``), and the plots and each cell's first reconstruction grid from
  ``report.html``, each figure with the commands that regenerate it. The figures are written beside the page
  as PNG files.

Nothing here writes into ``docs/``: the pages exist only in the built site.
"""

from __future__ import annotations

import base64
import html.parser
import re
from pathlib import Path
from typing import Any

STUDY_FILES = ("report.txt", "sweep.log", "report.html")


class _Figures(html.parser.HTMLParser):
    """The data-URI PNG figures of a study report: every plot (``<img class="plot">``) and the first
    reconstruction grid of each cell (the first figure after each ``<h3>``), with their captions."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: list[tuple[bytes, str]] = []
        self.cells: list[tuple[bytes, str]] = []
        self._heading: list[str] | None = None
        self._cell: str | None = None  # the current cell's heading, until its first figure is taken
        self._pending: tuple[bytes, bool] | None = None
        self._caption: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        source = found.get("src") or ""
        if tag == "h3":
            self._heading, self._cell = [], None
        elif tag == "img" and source.startswith("data:image/png;base64,"):
            is_plot = "plot" in (found.get("class") or "").split()
            if is_plot or self._cell is not None:
                self._pending = (base64.b64decode(source.split(",", 1)[1]), is_plot)
        elif tag == "figcaption" and self._pending is not None:
            self._caption = []

    def handle_data(self, data: str) -> None:
        for collecting in (self._heading, self._caption):
            if collecting is not None:
                collecting.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3" and self._heading is not None:
            self._cell, self._heading = " ".join("".join(self._heading).split()), None
        elif tag == "figcaption" and self._pending is not None and self._caption is not None:
            data, is_plot = self._pending
            caption = " ".join("".join(self._caption).split())
            if is_plot:
                self.plots.append((data, caption))
            else:
                self.cells.append((data, f"{self._cell}: {caption}"))
                self._cell = None
            self._pending, self._caption = None, None


def _sweep_command(log: str, name: str) -> str:
    """The sweep's command line from its ``sweep.log``, writing into ``studies/<name>`` as a reader would."""
    line = next((row[1:].strip() for row in log.splitlines() if row.startswith("#")), "")
    line = re.sub(r"^OMP_NUM_THREADS=\S+\s+", "", line).replace("python -m fedinvert", "fedinvert")
    return re.sub(r"out=\S+", f"out=studies/{name}", line) or f"fedinvert sweep benchmarks/{name}.yaml out=studies/{name}"


def study_folders(docs_dir: Path) -> list[Path]:
    """The study folders under ``docs_dir/results`` (at any depth): those that hold every one of `STUDY_FILES`."""
    results = docs_dir / "results"
    found = [p for p in results.rglob("*") if p.is_dir() and all((p / f).is_file() for f in STUDY_FILES)]
    return sorted(found)


def study_page(folder: Path, *, name: str | None = None) -> tuple[str, list[tuple[str, bytes]]]:
    """The Markdown page of one study folder (``name``: its path below ``results/``, default the folder's name)
    and the PNG files (name, bytes) it shows."""
    name = name or folder.name
    report = (folder / "report.txt").read_text(encoding="utf-8")
    log = (folder / "sweep.log").read_text(encoding="utf-8")
    done = re.search(r"(\d+) of \d+ runs .* in (\d+) s", log)
    size = f" ({done.group(1)} runs, {done.group(2)} s)" if done else ""
    sweep = _sweep_command(log, name)
    words = sweep.split()
    study_file = words[words.index("sweep") + 1] if "sweep" in words[:-1] else f"benchmarks/{name}.yaml"
    regenerate = f"Regenerate: `{sweep}`, then `fedinvert report studies/{name}`."
    figures = _Figures()
    figures.feed((folder / "report.html").read_text(encoding="utf-8"))
    lines = [
        f"# Study: {name}",
        "",
        f"Made by `{sweep}` on this project's 2-core CPU machine{size}; `fedinvert report studies/{name} --text`"
        f" prints the tables below and `fedinvert report studies/{name}` writes the page with every"
        f" reconstruction grid. The study file is `{study_file}`.",
        "",
        "Committed outputs: [report.html](report.html) (the full page, self-contained), [report.txt](report.txt),"
        " [results.csv](results.csv) (every run), [sweep.json](sweep.json), [sweep.log](sweep.log).",
        "",
        "## Tables",
        "",
        "```text",
        report.rstrip(),
        "```",
    ]
    images: list[tuple[str, bytes]] = []
    for title, prefix, shown in (("Plots", "plot", figures.plots), ("Reconstructions", "cell", figures.cells)):
        if not shown:
            continue
        lines += ["", f"## {title}", ""]
        if prefix == "cell":
            lines += ["The first private batch of each cell: the private row, the matched reconstruction, the no-leak"
                      " guess. [report.html](report.html) shows more of each cell.", ""]
        for number, (data, caption) in enumerate(shown, start=1):
            file_name = f"{prefix}-{number}.png"
            images.append((file_name, data))
            text = caption.replace("*", "\\*").replace("_", "\\_")
            lines += [f"![{text}]({file_name})", "", f"*{text}.* {regenerate}", ""]
    return "\n".join(lines) + "\n", images


def on_config(config: Any) -> Any:
    """List every study page under the nav's "Results" section (after the pages mkdocs.yml names there)."""
    docs_dir = Path(config["docs_dir"])
    for section in config["nav"] or []:
        if isinstance(section, dict) and isinstance(section.get("Results"), list):
            listed = {next(iter(entry.values())) for entry in section["Results"] if isinstance(entry, dict)}
            for folder in study_folders(docs_dir):
                name = folder.relative_to(docs_dir / "results").as_posix()
                if f"results/{name}/index.md" not in listed:
                    section["Results"].append({name: f"results/{name}/index.md"})
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to MkDocs' ``Files`` (MkDocs calls this after collecting ``docs/``)."""
    # imported here, so that the tests can use `study_page` without MkDocs installed
    from mkdocs.structure.files import File

    from fedinvert.provenance import markdown

    files.append(File.generated(config, "provenance.md", content=markdown()))
    docs_dir = Path(config["docs_dir"])
    for folder in study_folders(docs_dir):
        name = folder.relative_to(docs_dir / "results").as_posix()
        page, images = study_page(folder, name=name)
        files.append(File.generated(config, f"results/{name}/index.md", content=page))
        for file_name, data in images:
            files.append(File.generated(config, f"results/{name}/{file_name}", content=data))
    return files
