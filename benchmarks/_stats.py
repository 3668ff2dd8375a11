"""Statistics over private batches for the benchmark scripts (DESIGN §8).

A benchmark *cell* (one attack in one setting) is run on ``n`` private batches of distinct, seeded images and
reported as a mean with a 95 % Student-t interval over the batches. Every cell of a benchmark draws the very
same batches (`batch_indices`), so two cells can be compared by the paired difference of their per-batch
scores (`paired`), which removes the spread between batches that dwarfs most differences between attacks.

    layout = batch_indices("lfw", n_batches=8, per_batch=4, seed=0, unique_labels=True)
    rows = run_cell(["dataset=lfw", "batch_size=4", "attack=gifd", "prior=face-dcgan"], layout)
    summary = summarize(rows)          # psnr_mean, psnr_ci95, leakage_db, leakage_ci95, verdict, ...
    diff = paired(rows, other_rows)    # mean ± 95 % interval of psnr(rows) − psnr(other_rows), batch by batch

Intervals are half-widths: a cell's PSNR lies in ``psnr_mean ± psnr_ci95`` with 95 % confidence (over the
draw of private batches and victims, each batch having its own seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedinvert.config import resolve_config
from fedinvert.data.loader import build_dataset
from fedinvert.errors import ConfigError
from fedinvert.report.study import Interval, t_interval  # the report's own, so both agree to the digit
from fedinvert.runner import RunResult, run
from fedinvert.seeding import numpy_rng

CONFIDENCE = 0.95
NO_LEAK = "no leak measured"

#: what each per-batch row holds (besides ``batch``, ``seed`` and ``indices``)
BATCH_FIELDS = ("psnr", "ssim", "reference_psnr", "leakage_db", "reid_top1", "st_lpips", "label_accuracy",
                "seconds")
#: the columns of a cell summary, in CSV order
SUMMARY_FIELDS = ("n_batches", "psnr_mean", "psnr_ci95", "ssim_mean", "reference_psnr", "leakage_db",
                  "leakage_ci95", "reid_top1", "st_lpips", "label_accuracy", "seconds_mean", "verdict")
#: the columns of a paired difference, in CSV order
PAIRED_FIELDS = ("key", "n_batches", "diff_mean", "diff_ci95", "diff_low", "diff_high", "excludes_zero")


class ContractError(RuntimeError):
    """A run's metrics lack a key the benchmarks rely on (the no-leak reference of DESIGN §8)."""




# -- the private batches ---------------------------------------------------------------------------------
def batch_indices(
    dataset: str,
    *,
    n_batches: int,
    per_batch: int,
    seed: int = 0,
    split: str | None = None,
    unique_labels: bool = False,
    stride: int | None = None,
    root: str | None = None,
) -> list[list[int]]:
    """``n_batches`` disjoint private batches of ``per_batch`` image positions in ``dataset``'s split.

    A seeded permutation of the split is cut into consecutive blocks of ``stride`` (default ``per_batch``)
    positions; batch k is the first ``per_batch`` positions of block k. A benchmark whose cells need different
    batch sizes passes the largest as ``stride``, so the smaller batches are prefixes of the larger ones.
    With ``unique_labels`` the blocks are filled in permutation order skipping a position whose label the
    block already holds (it goes to the next block that lacks that label), so no batch repeats a label.

    Raises:
        ConfigError: the split holds too few images (or labels) for ``n_batches`` disjoint blocks.
    """
    if n_batches < 1 or per_batch < 1:
        raise ConfigError(f"need n_batches ≥ 1 and per_batch ≥ 1, got {n_batches} and {per_batch}")
    stride = per_batch if stride is None else stride
    if stride < per_batch:
        raise ConfigError(f"stride {stride} is smaller than per_batch {per_batch}")
    data = build_dataset(dataset, root=root)
    split = data.resolve_split(split)
    labels = data.labels(split=split)
    need = n_batches * stride
    where = f"dataset '{dataset}' split '{split}'"
    if need > len(labels):
        raise ConfigError(
            f"{where} holds {len(labels)} images; {n_batches} disjoint batches of {stride} need {need}"
        )
    order = numpy_rng(seed, "benchmark-batches").permutation(len(labels))
    if not unique_labels:
        return [order[k * stride : k * stride + per_batch].tolist() for k in range(n_batches)]
    blocks: list[list[int]] = [[] for _ in range(n_batches)]
    held: list[set[int]] = [set() for _ in range(n_batches)]
    for position in order:
        label = int(labels[position])
        for block, seen in zip(blocks, held, strict=True):
            if len(block) < stride and label not in seen:
                block.append(int(position))
                seen.add(label)
                break
        if all(len(b) == stride for b in blocks):
            return [b[:per_batch] for b in blocks]
    raise ConfigError(
        f"{where} has too few images per label for {n_batches} disjoint batches of {stride} distinct labels"
    )


def extend_batches(
    dataset: str,
    batches: Sequence[Sequence[int]],
    extra: int,
    *,
    seed: int = 0,
    split: str | None = None,
    root: str | None = None,
) -> list[list[int]]:
    """Each batch followed by ``extra`` more positions: the other clients' images under secure aggregation.

    The extra positions come from a seeded permutation of the positions in no batch, taken in turn, so the
    extended batches stay disjoint while that pool lasts and then reuse it; a batch that needs more than the
    pool holds draws from every position outside itself instead (it then shares images with other batches).
    Batch k's own positions stay first, so it pairs with the cells that ran batch k alone (`paired`).

    Raises:
        ConfigError: the split has fewer than ``len(batch) + extra`` images.
    """
    if extra <= 0:
        return [list(b) for b in batches]
    data = build_dataset(dataset, root=root)
    split = data.resolve_split(split)
    size = data.size(split=split)
    used = {int(i) for b in batches for i in b}
    rng = numpy_rng(seed, "benchmark-clients")
    pool = [int(i) for i in rng.permutation(size) if int(i) not in used]
    out, cursor = [], 0
    for batch in batches:
        own = [int(i) for i in batch]
        if extra <= len(pool):
            picks = [pool[(cursor + j) % len(pool)] for j in range(extra)]
            cursor = (cursor + extra) % len(pool)
        else:
            rest = [int(i) for i in rng.permutation(size) if int(i) not in own]
            if extra > len(rest):
                raise ConfigError(
                    f"dataset '{dataset}' split '{split}' holds {size} images; a batch of {len(own)} plus {extra}"
                    " other clients' images needs more"
                )
            picks = rest[:extra]
        out.append(own + picks)
    return out


# -- running a cell --------------------------------------------------------------------------------------
def _required(metrics: dict[str, Any], key: str) -> Any:
    if key not in metrics:
        raise ContractError(
            f"the run's metrics have no '{key}' (keys: {', '.join(sorted(metrics))}); the benchmarks need the"
            " no-leak reference in fedinvert.runner.evaluate_run (metrics 'reference', 'leakage_db', 'reid_top1')"
        )
    return metrics[key]


def batch_row(result: RunResult) -> dict[str, Any]:
    """The per-batch scores of one run (``BATCH_FIELDS``); ContractError when the reference keys are missing.

    ``reid_top1`` and ``st_lpips`` may be None (no distractors, no ST-LPIPS weights); the rest is required.
    """
    m = result.metrics
    reference = _required(m, "reference")
    leakage = _required(m, "leakage_db")
    reid = _required(m, "reid_top1")
    if reference is None or leakage is None:
        raise ContractError("the run has no no-leak reference (metrics 'reference' is null) although it has a private batch")
    return {
        "psnr": float(m["psnr"]),
        "ssim": float(m["ssim"]),
        "reference_psnr": float(reference["psnr"]),
        "leakage_db": float(leakage),
        "reid_top1": None if reid is None else float(reid),
        "st_lpips": None if m.get("st_lpips") is None else float(m["st_lpips"]),
        "label_accuracy": None if m.get("label_accuracy") is None else float(m["label_accuracy"]),
        "seconds": float(m["seconds"]),
    }


def run_cell(
    overrides: Sequence[str],
    batches: Sequence[Sequence[int]],
    *,
    seed: int = 0,
    extra: Callable[[RunResult, int], dict[str, Any]] | None = None,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run one cell (a list of config overrides) on each private batch; one row per batch.

    Batch k runs ``resolve_config([*overrides, dataset.indices=batches[k], seed=seed + k])`` through
    ``fedinvert.runner.run(cfg, write=False)``: its own victim initialisation and attack seed, the same for
    every cell of the benchmark. Each row holds ``batch`` (k), ``seed``, ``indices`` and ``BATCH_FIELDS``, plus
    whatever ``extra(result, k)`` returns; ``on_batch(row)`` is called after each batch (for progress).

    Raises:
        FedinvertError: a run rejects its configuration (raised before that run does any work).
        ContractError: the run's metrics lack the no-leak reference keys.
    """
    rows = []
    for k, indices in enumerate(batches):
        cfg = resolve_config([*overrides, f"dataset.indices={list(indices)}", f"seed={seed + k}"])
        result = run(cfg, write=False)
        row: dict[str, Any] = {"batch": k, "seed": seed + k, "indices": " ".join(str(i) for i in indices)}
        row.update(batch_row(result))
        if extra is not None:
            row.update(extra(result, k))
        rows.append(row)
        if on_batch is not None:
            on_batch(row)
    return rows


# -- summaries -------------------------------------------------------------------------------------------
def _mean(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def verdict(leakage: Interval) -> str:
    """``no leak measured`` unless the leakage interval lies wholly above 0 dB, else ``leaks +m ± h dB``."""
    if leakage.low > 0:
        return f"leaks {leakage.mean:+.2f} ± {leakage.half:.2f} dB"
    return NO_LEAK


def summarize(rows: Sequence[dict[str, Any]], *, means: Sequence[str] = ()) -> dict[str, Any]:
    """The cell summary (``SUMMARY_FIELDS``) of per-batch rows from `run_cell`.

    ``reference_psnr``, ``reid_top1``, ``label_accuracy`` and ``seconds_mean`` are means over the batches;
    ``leakage_db`` ± ``leakage_ci95`` is the t-interval of the per-batch leakage; ``verdict`` says whether it
    lies above 0 dB. Each key in ``means`` (a column that ``run_cell``'s ``extra`` added) is averaged too,
    over the batches where it is not None.
    """
    if not rows:
        raise ValueError("summarize needs at least one batch")
    psnr = t_interval([r["psnr"] for r in rows])
    leakage = t_interval([r["leakage_db"] for r in rows])
    return {
        "n_batches": len(rows),
        "psnr_mean": psnr.mean,
        "psnr_ci95": psnr.half,
        "ssim_mean": _mean(rows, "ssim"),
        "reference_psnr": _mean(rows, "reference_psnr"),
        "leakage_db": leakage.mean,
        "leakage_ci95": leakage.half,
        "reid_top1": _mean(rows, "reid_top1"),
        "st_lpips": _mean(rows, "st_lpips"),
        "label_accuracy": _mean(rows, "label_accuracy"),
        "seconds_mean": _mean(rows, "seconds"),
        "verdict": verdict(leakage),
        **{key: _mean(rows, key) for key in means},
    }


def paired(
    rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], key: str = "psnr"
) -> dict[str, Any]:
    """Paired difference ``a − b`` of ``key`` over the batches both cells ran (``PAIRED_FIELDS``).

    Rows are paired by their ``batch`` number; the two cells must have run the same batches (same seeds; the
    same indices, or — for a cell with more images per batch — indices that begin with the other's).

    Raises:
        ValueError: the cells ran different batches, or none in common.
    """
    by_batch = {r["batch"]: r for r in rows_b}
    if sorted(by_batch) != sorted(r["batch"] for r in rows_a) or not rows_a:
        raise ValueError("paired differences need two cells run on the same batches")
    diffs = []
    for a in rows_a:
        b = by_batch[a["batch"]]
        short, long = sorted((str(a["indices"]).split(), str(b["indices"]).split()), key=len)
        if a["seed"] != b["seed"] or long[: len(short)] != short:
            raise ValueError(f"batch {a['batch']} differs between the two cells (seeds or images)")
        diffs.append(a[key] - b[key])
    interval = t_interval(diffs)
    return {
        "key": key,
        "n_batches": interval.n,
        "diff_mean": interval.mean,
        "diff_ci95": interval.half,
        "diff_low": interval.low,
        "diff_high": interval.high,
        "excludes_zero": interval.excludes_zero,
    }


def fmt_interval(mean: float | None, half: float | None, spec: str = ".2f") -> str:
    """``mean ± half`` (``n/a`` for a missing mean)."""
    if mean is None:
        return "n/a"
    if half is None:
        return format(mean, spec)
    return f"{format(mean, spec)} ± {format(half, spec)}"


def pair_label(a: str, b: str) -> str:
    """How tables name the paired difference of cells ``a`` and ``b``."""
    return f"{a} − {b}"
