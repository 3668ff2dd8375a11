"""Image grids and loss curves, drawn with PIL (a run folder's figures cost no plotting library's import)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

PNG_LEVEL = 3
"""zlib level of the figures' PNGs: level 6 (PIL's default) spends 2-3× the time for files 5-30 % smaller."""


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
    image_grid(rows, labels=labels, caption=caption).save(path, compress_level=PNG_LEVEL)


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


#: Line colours of the loss plot, one per restart or stage (matplotlib's default cycle).
LINE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _loss_groups(history: Sequence[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Per restart or stage: (steps, log10 distances), stages laid end to end along the step axis."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in history:
        groups.setdefault(str(entry.get("stage", entry.get("restart", ""))), []).append(entry)
    out: dict[str, tuple[list[float], list[float]]] = {}
    offset = 0.0
    for key, entries in groups.items():
        steps = [offset + float(e.get("step", i)) for i, e in enumerate(entries)]
        values = [float(e.get("distance", np.nan)) for e in entries]
        logs = [float(np.log10(max(v, 1e-12))) if np.isfinite(v) else np.nan for v in values]
        out[key or "distance"] = (steps, logs)
        if "stage" in entries[0] and steps:
            offset = steps[-1]
    return out


def save_loss_plot(path: str | Path, history: Sequence[dict[str, Any]], *, title: str = "") -> None:
    """Gradient distance against logged step, log scale, one line per restart/stage when present (600 × 350 PNG).

    Decade ticks on the distance axis, five ticks on the step axis, a legend when there is more than one line.
    """
    width, height, left, right, top, bottom = 600, 350, 64, 16, 28, 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    groups = _loss_groups(history)
    points = [(x, y) for xs, ys in groups.values() for x, y in zip(xs, ys, strict=True) if np.isfinite(y)]
    x1 = max((x for x, _ in points), default=1.0) or 1.0
    low = float(np.floor(min((y for _, y in points), default=-1.0)))
    high = max(float(np.ceil(max((y for _, y in points), default=0.0))), low + 1)
    box = (left, top, width - right, height - bottom)

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (box[2] - left) * x / x1, box[3] - (box[3] - top) * (y - low) / (high - low))

    for decade in range(int(low), int(high) + 1):
        _, py = at(0, decade)
        draw.line([(left - 4, py), (left, py)], fill="black")
        draw.line([(left + 1, py), (box[2] - 1, py)], fill="#e6e6e6")
        draw.text((left - 6, py), f"1e{decade}", fill="black", anchor="rm")
    for k in range(6):
        step = x1 * k / 5
        px, _ = at(step, low)
        draw.line([(px, box[3]), (px, box[3] + 4)], fill="black")
        draw.text((px, box[3] + 6), f"{step:.0f}", fill="black", anchor="ma")
    draw.rectangle(box, outline="black")
    draw.text(((left + box[2]) / 2, height - 4), "step", fill="black", anchor="md")
    label = Image.new("RGB", (140, 14), "white")
    ImageDraw.Draw(label).text((70, 7), "gradient distance", fill="black", anchor="mm")
    img.paste(label.rotate(90, expand=True), (2, (top + box[3]) // 2 - 70))
    if title:
        draw.text((width / 2, 6), title, fill="black", anchor="ma")
    for n, (key, (xs, ys)) in enumerate(groups.items()):
        colour = LINE_COLOURS[n % len(LINE_COLOURS)]
        line = [at(x, y) for x, y in zip(xs, ys, strict=True) if np.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        elif line:
            draw.ellipse([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2], fill=colour)
        if len(groups) > 1:
            draw.text((box[2] - 6, top + 6 + 12 * n), key, fill=colour, anchor="ra")
    img.save(path, compress_level=PNG_LEVEL)
