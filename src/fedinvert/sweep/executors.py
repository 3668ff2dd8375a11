"""Where a study's runs execute: this process, a pool of local processes, or the tasks of a Ray cluster.

Every executor calls the same worker, `execute`, and hands its outcomes back to the driver, which alone writes
the result store. A Ray task runs in a temporary folder of its node and returns the finished run folder packed
as a tar archive, so a cluster needs no shared file system.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from fedinvert.errors import ConfigError, FedinvertError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Task:
    """One run to execute: its id, resolved configuration and the command recorded in its run.json."""

    id: str
    config: dict[str, Any]
    argv: list[str]


@dataclass
class Outcome:
    """What came back from a run: ``ok`` (with its metrics.json), ``failed`` (with a one-line error) or
    ``interrupted`` (Ctrl-C: its folder is not kept as a finished run)."""

    id: str
    status: str
    metrics: dict[str, Any] | None = None
    error: str | None = None
    packed: bytes | None = None
    worker: str | None = None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if isinstance(err, FedinvertError) else f"{type(err).__name__}: {text}".rstrip(": ")


def _worker(threads: int | None) -> str:
    """This worker's name (node:pid), after setting its torch CPU threads."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return f"{os.uname().nodename}:{os.getpid()}" if hasattr(os, "uname") else str(os.getpid())


def _run_config(task: Task, folder: Path) -> dict[str, Any]:
    return dict(task.config, out=str(folder), overwrite=True, progress=False)


def _outcome(task: Task, result: Any, folder: Path, worker: str) -> Outcome:
    """A run's outcome from what `run` returned or raised (an exception: a failed run)."""
    if isinstance(result, Exception):
        return Outcome(task.id, "failed", error=_one_line(result), worker=worker)
    if result.reconstruction.interrupted:
        return Outcome(task.id, "interrupted", worker=worker)
    metrics = json.loads((folder / "metrics.json").read_text())
    return Outcome(task.id, "ok", metrics=metrics, worker=worker)


def execute(task: Task, folder: Path, threads: int | None = None) -> Outcome:
    """Run ``task`` into ``folder`` (replacing an interrupted run folder left there) and read its metrics back."""
    from fedinvert.runner import run

    worker = _worker(threads)
    try:
        result = run(_run_config(task, folder), argv=task.argv)
    except KeyboardInterrupt:
        return Outcome(task.id, "interrupted", worker=worker)
    except Exception as err:  # a failing run is recorded with its error; the sweep goes on
        return _outcome(task, err, folder, worker)
    return _outcome(task, result, folder, worker)


def execute_group(tasks: Sequence[Task], runs_dir: Path, threads: int | None = None,
                  varying: Sequence[str] = ("seed",)) -> list[Outcome]:
    """`execute` for runs that differ only in the ``varying`` keys (a study's replicates), as one batched attack
    where it can (`fedinvert.runner.run_batched`); one outcome per task, in order."""
    if len(tasks) == 1:
        return [execute(tasks[0], runs_dir / tasks[0].id, threads)]
    from fedinvert.runner import run_batched

    worker = _worker(threads)
    try:
        results = run_batched([_run_config(t, runs_dir / t.id) for t in tasks], argv=tasks[0].argv, varying=varying)
    except KeyboardInterrupt:
        return [Outcome(t.id, "interrupted", worker=worker) for t in tasks]
    except Exception as err:  # the group as a whole failed (not one run of it): each is recorded with it
        results = [err] * len(tasks)
    return [_outcome(t, r, runs_dir / t.id, worker) for t, r in zip(tasks, results, strict=True)]


def group_tasks(tasks: Sequence[Task], batch: int, varying: Sequence[str] = ("seed",)) -> list[list[Task]]:
    """``tasks`` in groups of up to ``batch`` that differ only in the ``varying`` keys
    (`fedinvert.runner.batch_key`), in the order of each group's first task; ``batch`` = 1 leaves every task
    alone."""
    if batch <= 1:
        return [[t] for t in tasks]
    from fedinvert.runner import batch_key

    open_groups: dict[str, list[Task]] = {}
    groups: list[list[Task]] = []
    for task in tasks:
        key = batch_key(task.config, varying)
        group = open_groups.get(key)
        if group is None or len(group) >= batch:
            group = open_groups[key] = []
            groups.append(group)
        group.append(task)
    return groups


def execute_packed(task: Task, threads: int | None = None) -> Outcome:
    """`execute` in a temporary folder; a finished run folder comes back as an uncompressed tar archive."""
    with tempfile.TemporaryDirectory(prefix="fedinvert-sweep-") as tmp:
        folder = Path(tmp) / task.id
        outcome = execute(task, folder, threads)
        if outcome.status == "ok":
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as archive:
                for item in sorted(folder.iterdir()):
                    archive.add(item, arcname=item.name, recursive=False)
            outcome.packed = buffer.getvalue()
    return outcome


def unpack(packed: bytes, folder: Path) -> None:
    """Put a packed run folder at ``folder``: extracted (plain files only) into a sibling, then renamed."""
    tmp = folder.with_name(f".{folder.name}.incoming-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r") as archive:
        for member in archive.getmembers():
            if not member.isfile() or "/" in member.name or member.name.startswith("."):
                raise ConfigError(f"a worker sent a run folder with an unexpected entry {member.name!r}")
            source = archive.extractfile(member)
            assert source is not None
            (tmp / member.name).write_bytes(source.read())
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted run's folder of the same id (only run folders live in runs/)
    os.replace(tmp, folder)


def run_local(tasks: Sequence[Task], runs_dir: Path, *, jobs: int, threads: int | None,
              batch: int = 1, varying: Sequence[str] = ("seed",)) -> Iterator[Outcome]:
    """Outcomes as they finish: in this process for one job, else in ``jobs`` spawned processes; with ``batch``
    > 1, runs that differ only in the ``varying`` keys go together (`group_tasks`, `execute_group`)."""
    groups = group_tasks(tasks, batch, varying)
    if jobs == 1:
        for group in groups:
            outcomes = execute_group(group, runs_dir, threads, varying)
            yield from outcomes
            if any(o.status == "interrupted" for o in outcomes):
                raise KeyboardInterrupt
        return
    per_job = threads or max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))
    futures: dict[Future[list[Outcome]], list[Task]] = {}
    queue = list(groups)
    try:
        while queue or futures:
            while queue and len(futures) < 2 * jobs:  # a short queue: Ctrl-C leaves little to cancel
                group = queue.pop(0)
                futures[pool.submit(execute_group, group, runs_dir, per_job, varying)] = group
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                group = futures.pop(future)
                try:
                    outcomes = future.result()
                except Exception as err:  # the worker process died (killed, out of memory)
                    error = f"worker process failed: {_one_line(err)}"
                    outcomes = [Outcome(task.id, "failed", error=error) for task in group]
                yield from outcomes
                if any(o.status == "interrupted" for o in outcomes):
                    raise KeyboardInterrupt
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_ray(tasks: Sequence[Task], runs_dir: Path, *, jobs: int, threads: int | None,
            address: str | None) -> Iterator[Outcome]:
    """Outcomes of Ray tasks as they finish, one CPU each; on a cluster at ``address`` or a local one of
    ``jobs`` CPUs started (and stopped) for the sweep. Each finished folder is unpacked under ``runs_dir``."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPU-visibility warning on CPU nodes


    import ray

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    remote = ray.remote(num_cpus=1)(execute_packed)
    pending: dict[Any, Task] = {}
    queue = list(tasks)
    width = 2 * jobs if not address else 2 * max(1, int(ray.cluster_resources().get("CPU", jobs)))
    try:
        while queue or pending:
            while queue and len(pending) < width:
                task = queue.pop(0)
                pending[remote.remote(task, threads or 1)] = task  # type: ignore[call-arg]
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as err:  # the task or its node died
                    outcome = Outcome(task.id, "failed", error=f"ray task failed: {_one_line(err)}")
                if outcome.status == "ok" and outcome.packed is not None:
                    unpack(outcome.packed, runs_dir / task.id)
                    outcome.packed = None
                yield outcome
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
