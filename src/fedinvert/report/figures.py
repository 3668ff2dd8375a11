"""Image grids (PIL) and loss curves (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor


def _to_uint8(images: Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, 3) uint8 (grey repeated to RGB)."""
    arr = images.detach().float().clamp(0, 1).cpu().numpy()
    if arr.shape[1] == 1:
        arr = np.repeat(arr, 3, axis=1)
    return (arr.transpose(0, 2, 3, 1) * 255 + 0.5).astype(np.uint8)


def image_grid(
    rows: Sequence[Tensor],
    *,
    labels: Sequence[str] | None = None,
    scale: int | None = None,
    pad: int = 2,
    caption: Sequence[str] | str | None = None,
) -> Image.Image:
    """One row per tensor of (B, C, H, W) images in [0, 1]; an optional text label left of each row.

    Small images are upscaled by an integer ``scale`` (default: to at least 64 px) with nearest neighbour.
    ``caption`` (a line or a list of lines) is written below the rows; the canvas widens to fit it.
    """
    if not rows:
        raise ValueError("image_grid needs at least one row")
    height, width = rows[0].shape[-2:]
    scale = scale or max(1, 64 // max(height, width))
    h, w = height * scale, width * scale
    columns = max(r.shape[0] for r in rows)
    label_width = 0 if labels is None else 8 + 7 * max(len(t) for t in labels)
    lines = [caption] if isinstance(caption, str) else list(caption or [])
    line_height = 14
    grid_width = label_width + columns * (w + pad) + pad
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max((int(measure.textlength(line)) + 8 for line in lines), default=0)
    grid_height = len(rows) * (h + pad) + pad
    canvas = Image.new("RGB", (max(grid_width, text_width), grid_height + line_height * len(lines)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = pad + r * (h + pad)
        if labels is not None:
            draw.text((4, top + h // 2 - 6), labels[r], fill="black")
        for c, image in enumerate(_to_uint8(row)):
            tile = Image.fromarray(image).resize((w, h), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_width + pad + c * (w + pad), top))
    for i, line in enumerate(lines):
        draw.text((4, grid_height + i * line_height + 1), line, fill="black")
    return canvas


def save_grid(
    path: str | Path,
    rows: Sequence[Tensor],
    *,
    labels: Sequence[str] | None = None,
    caption: Sequence[str] | str | None = None,
) -> None:
    """`image_grid` written to ``path`` (PNG)."""
    image_grid(rows, labels=labels, caption=caption).save(path)


def leakage_caption(metrics: dict[str, Any]) -> list[str]:
    """The caption lines of ``reconstruction.png``: PSNR, the no-leak reference and the leakage, in dB.

    ``metrics`` is a ``metrics.json`` mapping; missing numbers are left out (an empty list without a PSNR).
    """
    psnr = metrics.get("psnr")
    if psnr is None:
        return []
    lines = [f"PSNR {psnr:.2f} dB"]
    reference, leakage = metrics.get("reference"), metrics.get("leakage_db")
    if reference is not None and leakage is not None:
        lines.append(f"no-leak reference {reference['psnr']:.2f} dB ({reference['best'].replace('_', ' ')})")
        lines.append(f"leakage {leakage:+.2f} dB" if leakage > 0 else f"leakage {leakage:+.2f} dB: no leak measured")
    if metrics.get("reid_top1") is not None:
        lines.append(f"re-id {metrics['reid_top1']:.2f} among {metrics['reid_distractors'] + 1}")
    return lines


def save_loss_plot(path: str | Path, history: Sequence[dict[str, Any]], *, title: str = "") -> None:
    """Gradient distance (and loss) against logged step, log scale; one line per restart/stage when present."""
    # a Figure on its own Agg canvas: no pyplot (0.3 s to import, and global state a library should not touch)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in history:
        key = str(entry.get("stage", entry.get("restart", "")))
        groups.setdefault(key, []).append(entry)
    offset = 0
    for key, entries in groups.items():
        steps = [offset + e.get("step", i) for i, e in enumerate(entries)]
        values = [max(float(e.get("distance", np.nan)), 1e-12) for e in entries]
        ax.plot(steps, values, label=key or "distance")
        if "stage" in entries[0]:
            offset = steps[-1] if steps else offset
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient distance")
    if title:
        ax.set_title(title)
    if len(groups) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
