"""Studies: `fedinvert sweep STUDY.yaml out=DIR` expands a study file into runs and executes the ones its
folder does not hold yet, locally or on Ray, storing each as it finishes (`fedinvert.sweep.store`).

A sweep killed at any moment and started again with the same command loses no finished run and repeats none;
a run that fails is stored with its error (and tried again on the next start) without stopping the others.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedinvert.errors import ConfigError
from fedinvert.sweep.executors import EXECUTORS, Outcome, Task, run_local, run_ray
from fedinvert.sweep.store import MARKER, ResultStore, adopt_orphans, atomic_write, check_study_folder
from fedinvert.sweep.study import PlannedRun, Study, describe, load_study, parse_study

__all__ = ["PlannedRun", "Study", "SweepSummary", "load_study", "parse_study", "plan_sweep", "run_sweep"]

log = logging.getLogger(__name__)


@dataclass
class SweepSummary:
    """What a sweep did: planned runs, those already stored, finished and failed now, and where it wrote."""

    folder: Path
    total: int
    already: int
    finished: int = 0
    failed: int = 0
    adopted: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return self.already + self.finished

    def line(self) -> str:
        state = "interrupted; run the same command to resume" if self.interrupted else "done"
        failed = f", {self.failed} failed (errors in results.csv)" if self.failed else ""
        adopted = f", {self.adopted} adopted from their folders" if self.adopted else ""
        return (f"{state}: {self.stored} of {self.total} runs stored ({self.already} already there{adopted},"
                f" {self.finished} finished now{failed}) in {self.seconds:.0f} s; {self.folder / 'results.csv'}")


@dataclass(frozen=True)
class SweepPlan:
    """A study expanded and checked, with its folder and executor settings, before anything is written."""

    study: Study
    runs: list[PlannedRun]
    folder: Path
    executor: str
    jobs: int
    address: str | None
    threads: int | None
    full: bool
    command: list[str]
    batch: int = 1


def plan_sweep(study_file: str | Path, *, out: str | None, executor: str = "local", jobs: int = 1,
               address: str | None = None, threads: int | None = None, full: bool = False,
               overrides: Sequence[str] = (), command: Sequence[str] = (), batch: int = 1) -> SweepPlan:
    """Every check a sweep makes before any work: the study, each run's configuration, the folder, the executor.

    ``batch`` > 1 runs up to that many runs that differ only in the study's replicate axes (a cell's private
    batches; ``seed`` by default) as one batched attack where the attack allows it
    (`fedinvert.runner.run_batched`); local executor.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"--batch must be a whole number ≥ 1, got {batch!r}")
    if batch > 1 and executor != "local":
        raise ConfigError("--batch runs replicates together in one process; it needs --executor local")
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: unknown executor '{executor}'; known: {', '.join(EXECUTORS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number ≥ 1, got {jobs!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"--threads must be a whole number ≥ 1, got {threads!r}")
    if address is not None and executor != "ray":
        raise ConfigError("--address is the Ray cluster's address; it needs --executor ray")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("--executor ray needs Ray: pip install 'fedinvert[ray]'")
    if not out:
        raise ConfigError("sweep needs out=DIR, the study folder (created, or resumed when it holds the study)")
    bad = [o for o in overrides if o.split("=", 1)[0].strip() in ("out", "overwrite", "progress")]
    if bad:
        raise ConfigError(f"{bad[0].split('=', 1)[0]}: the sweep sets it for every run; give only out=DIR")
    study = load_study(study_file, full=full)
    runs = study.runs(list(overrides))
    folder = Path(out)
    check_study_folder(folder, out)
    return SweepPlan(study, runs, folder, executor, jobs, address, threads, full, list(command), batch)


def _describe_folder(plan: SweepPlan) -> dict[str, Any]:
    study = plan.study
    return {
        "name": study.name,
        "description": study.description,
        "axes": study.axis_keys,
        "replicates": study.replicates,
        "zip": [list(group) for group in study.zips],
        "compare": study.compare,
        "total": len(plan.runs),
        "full": plan.full,
        "command": " ".join(plan.command),
        "study": study.source,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_sweep(plan: SweepPlan, *, progress: bool = True) -> SweepSummary:
    """Execute the runs of ``plan`` its folder does not hold yet; store each as it finishes.

    Ctrl-C stops the sweep after the runs in flight (their partial results are not stored) and returns a
    summary marked interrupted; every run stored before stays.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    folder = plan.folder
    runs_dir = folder / "runs"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "study.yaml", Path(plan.study.source).read_text(encoding="utf-8"))
        atomic_write(folder / MARKER, json.dumps(_describe_folder(plan), indent=2, default=str) + "\n")
    except OSError as err:
        raise ConfigError(f"out={folder}: cannot write the study folder ({err.strerror or err})") from None
    store = ResultStore(folder)
    try:
        planned = {r.id: r.values for r in plan.runs}
        order = [(r.id, r.values) for r in plan.runs]
        adopted = adopt_orphans(store, runs_dir, planned)
        stored = store.rows()
        done_ids = {i for i, row in stored.items() if row.status == "ok"}
        todo = [r for r in plan.runs if r.id not in done_ids]
        summary = SweepSummary(folder, total=len(plan.runs), already=len(plan.runs) - len(todo), adopted=adopted)
        store.write_csv(plan.study.axis_keys, order)
        argv = [*plan.command] or ["fedinvert", "sweep", plan.study.source, f"out={folder}"]
        tasks = [Task(r.id, r.config, argv) for r in todo]
        by_id = {r.id: r for r in todo}
        if plan.executor == "ray":
            outcomes = run_ray(tasks, runs_dir, jobs=plan.jobs, threads=plan.threads, address=plan.address)
        else:
            outcomes = run_local(tasks, runs_dir, jobs=plan.jobs, threads=plan.threads, batch=plan.batch,
                                 varying=plan.study.replicates or ("seed",))
        bar = tqdm(total=len(plan.runs), initial=summary.already, unit="run", disable=not progress,
                   desc=plan.study.name, dynamic_ncols=True)
        try:
            for outcome in outcomes:
                _store(store, outcome, by_id[outcome.id], summary)
                store.write_csv(plan.study.axis_keys, order)
                bar.update(1 if outcome.status != "interrupted" else 0)
                bar.set_postfix(failed=summary.failed, refresh=False)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
        store.write_csv(plan.study.axis_keys, order)
    finally:
        store.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _store(store: ResultStore, outcome: Outcome, planned: PlannedRun, summary: SweepSummary) -> None:
    if outcome.status == "ok":
        store.put(outcome.id, status="ok", values=planned.values, metrics=outcome.metrics, worker=outcome.worker)
        summary.finished += 1
    elif outcome.status == "failed":
        store.put(outcome.id, status="failed", values=planned.values, metrics=None, error=outcome.error,
                  worker=outcome.worker)
        summary.failed += 1
        summary.errors.append(f"{describe(planned.values)}: {outcome.error}")
        log.info("run %s (%s) failed: %s", outcome.id, describe(planned.values), outcome.error)
