"""`fedinvert tune key=value … --trials N out=DIR`: search an attack's hyper-parameters with Optuna.

The ``key=value`` configuration is the user's scenario, exactly as ``fedinvert attack`` takes it; each trial is
that configuration with the searched keys (`fedinvert.tune.space`) set, run through the sweep's executors
(`fedinvert.sweep.executors.run_local` / `run_ray`) into ``DIR/trials/NNNN/``, an ordinary run folder.

**The objective is the gradient distance the attack reaches on the observed update** — the run's recorded
``distance`` (`Reconstruction.score`): the attack's own pure distance (no TV, no norm, no other regulariser, so
a trial's regulariser weights do not change its scale) of the images it returns. The attacker has no ground
truth, so PSNR, the leakage over the no-leak reference and the other metrics are kept beside each trial as
user attributes and reported, never used to choose. Keys that define the distance itself cannot be searched.

The study lives in ``DIR/tune.db`` (Optuna's RDB storage on SQLite, ``load_if_exists``), TPE seeded. Trial 0 is
the configuration as given (``enqueue_trial``), so the default's objective and PSNR are measured in the same
tune. A tune stopped at any moment (Ctrl-C, SIGKILL) and started again with the same command continues where it
stopped: a finished trial is never run again; a trial that was running is marked failed (``interrupted`` in
trials.csv) and its parameters are run again as a new trial — it is counted once. A run whose folder was
complete when the tune was killed, before Optuna heard of it, is adopted from its ``metrics.json``. One driver
holds ``DIR/.tune.lock`` (so an untold trial can only be a dead tune's); the ask/tell loop runs no Optuna
heartbeat, so stale trials are recovered here on start rather than by a heartbeat callback.

With ``--jobs N`` the driver asks Optuna for N trials at once (TPE with the constant liar, so they differ), runs
them together and tells each as it finishes. ``--trials N`` counts finished trials (complete or failed with an
error); a larger N later extends the same tune.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import importlib.util
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedinvert.errors import ConfigError, FedinvertError
from fedinvert.tune.outputs import (
    REPORTED,
    TrialRow,
    default_row,
    params_text,
    preset_text,
    rank_correlation,
    select_best,
    trial_line,
    trials_csv,
)
from fedinvert.tune.space import DEFAULT_SPACES, RADII_SCALE, Param, SearchSpace, build_space

__all__ = ["DEFAULT_SPACES", "Param", "SearchSpace", "TunePlan", "TuneSummary", "TrialRow", "plan_tune",
           "run_tune", "select_best"]

log = logging.getLogger(__name__)

MARKER = "tune.json"
STUDY_NAME = "fedinvert-tune"
LOCK = ".tune.lock"
_SET_BY_TUNE = ("out", "overwrite", "progress")


@dataclass(frozen=True)
class TunePlan:
    """A tune checked before any work: the scenario, the space, the folder and the executor settings."""

    overrides: list[str]
    config: dict[str, Any]
    attack: str
    space: SearchSpace
    base_radii: list[float] | None
    folder: Path
    trials: int
    executor: str
    jobs: int
    threads: int | None
    address: str | None
    sampler_seed: int
    command: list[str]

    @property
    def identity(self) -> dict[str, Any]:
        """What a resumed tune must share with the one that made the folder."""
        from fedinvert.sweep.study import config_id

        return {"config_id": config_id(self.config), "space": self.space.as_list(), "sampler_seed": self.sampler_seed}

    def trial_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """The scenario with ``params`` set, resolved and checked (`resolve_config`)."""
        from fedinvert.config import resolve_config
        from fedinvert.sweep.study import override

        extra = []
        for key, value in params.items():
            if key == RADII_SCALE:
                extra.append(override("attack.radii", [value * r for r in self.base_radii or []]))
            else:
                extra.append(override(key, value))
        return resolve_config([*self.overrides, *extra])


@dataclass
class TuneSummary:
    """What a tune did, and the rows of every trial for the summary."""

    folder: Path
    target: int
    before: int
    finished: int = 0
    failed: int = 0
    recovered: int = 0
    adopted: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    rows: list[TrialRow] = field(default_factory=list)
    attack: str = ""
    seed: int = 0
    space: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The printed summary: counts, trial 0 and the best trial side by side, where the files are."""
        state = "interrupted; run the same command to resume" if self.interrupted else "done"
        done = sum(r.status in ("complete", "failed") for r in self.rows)
        extra = "".join([f", {self.recovered} interrupted before and run again" if self.recovered else "",
                         f", {self.adopted} adopted from their folders" if self.adopted else "",
                         f", {self.failed} failed (errors in trials.csv)" if self.failed else ""])
        out = [f"{state}: {self.attack} — {done} of {self.target} trials finished ({self.before} already there,"
               f" {self.finished} now{extra}) in {self.seconds:.0f} s",
               "  objective: the gradient distance the attack reaches on the observed update (seed"
               f" {self.seed}); PSNR is reported beside it, never used to choose",
               f"  searched: {'; '.join(self.space)}"]
        default, best = default_row(self.rows), select_best(self.rows)
        if default is not None:
            out.append("  " + trial_line("default", default))
        if best is not None:
            out.append("  " + trial_line("best   ", best))
            if default is not None and default.objective:
                out.append(f"  best / default distance: {best.objective / default.objective:.3g}")  # type: ignore[operator]
        correlation = rank_correlation(self.rows)
        if correlation is not None:
            out.append(f"  distance vs PSNR over {correlation[1]} trials: Spearman ρ = {correlation[0]:+.2f}"
                       " (negative: a lower distance came with a higher PSNR)")
        if best is not None:
            out.append(f"  best configuration: {self.folder / 'best.yaml'} (fedinvert attack"
                       f" preset={self.folder / 'best.yaml'}); trials: {self.folder / 'trials.csv'}")
            out.append("  tuned on one private batch: compare it with default.yaml on other seeds (fedinvert sweep)"
                       " before trusting it")
        return out


# -- planning ------------------------------------------------------------------------------------------
def _check_count(name: str, value: Any, least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be a whole number ≥ {least}, got {value!r}")


def plan_tune(overrides: Sequence[str], *, trials: int, space: Sequence[str] = (), executor: str = "local",
              jobs: int = 1, threads: int | None = None, address: str | None = None, sampler_seed: int = 0,
              command: Sequence[str] = ()) -> TunePlan:
    """Every check a tune makes before any work: the options, the scenario, the space, the folder.

    Args:
        overrides: the scenario as ``key=value`` (``fedinvert attack``'s), with ``out=DIR``, the tune folder.
        trials: finished trials the study should hold (≥ 1).
        space: ``--space`` entries (`fedinvert.tune.space`).
        executor, jobs, threads, address: as for ``fedinvert sweep``; ``jobs`` trials are asked at once.
        sampler_seed: the TPE sampler's seed.
        command: the command line, recorded in tune.json and each run's run.json.

    Raises:
        ConfigError: one line naming what is wrong; nothing is written.
    """
    from fedinvert.config import resolve_config
    from fedinvert.sweep.executors import EXECUTORS

    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("fedinvert tune needs Optuna: pip install 'fedinvert[tune]'")
    _check_count("--trials", trials)
    _check_count("--jobs", jobs)
    _check_count("--sampler-seed", sampler_seed, least=0)
    if threads is not None:
        _check_count("--threads", threads)
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: unknown executor '{executor}'; known: {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise ConfigError("--address is the Ray cluster's address; it needs --executor ray")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("--executor ray needs Ray: pip install 'fedinvert[ray]'")
    out = None
    scenario: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"argument {item!r} is not key=value (the tune folder is out=DIR)")
        if key.strip() == "out":
            out = value
        elif key.strip() in _SET_BY_TUNE:
            raise ConfigError(f"{key.strip()}: the tune sets it for every trial; give only out=DIR")
        else:
            scenario.append(item)
    if not out:
        raise ConfigError("tune needs out=DIR, the tune folder (created, or resumed when it holds this tune)")
    cfg = resolve_config(scenario)
    attack, keywords, radii = _attack_keywords(cfg)
    from fedinvert.attacks import ATTACKS
    from fedinvert.config import class_keywords

    factory, _ = ATTACKS.entry(attack)
    valid = [k for k in class_keywords(factory) if k not in ("device", "prior")]
    searched = build_space(attack, keywords, space, valid=valid)
    plan = TunePlan(overrides=scenario, config=cfg, attack=attack, space=searched, base_radii=radii,
                    folder=Path(out), trials=trials, executor=executor, jobs=jobs, threads=threads,
                    address=address, sampler_seed=sampler_seed, command=list(command))
    for param in searched.params:  # every range end and choice must give a valid configuration
        for value in param.values():
            try:
                plan.trial_config({param.key: value})
            except FedinvertError as err:
                raise ConfigError(f"--space {param.key}: the value {value!r} is not valid: {err}") from None
    plan.trial_config(searched.defaults)
    _check_folder(plan.folder, out, plan.identity)
    return plan


def _attack_keywords(cfg: dict[str, Any]) -> tuple[str, dict[str, Any], list[float] | None]:
    """The attack's name, its fully resolved keywords and, where it has ℓ1 balls, its resolved radii."""
    import torch

    from fedinvert.runner import build_attack

    attack, keywords = build_attack(copy.deepcopy(cfg), device=torch.device("cpu"))
    radii = getattr(attack, "radii", None)
    return str(cfg["attack"]["name"]), keywords, None if radii is None else [float(r) for r in radii]


def _check_folder(folder: Path, shown: str, identity: dict[str, Any]) -> None:
    """Refuse an ``out`` that is a file, a link, unwritable, a non-empty folder that is not a tune folder, or the
    folder of another tune (another scenario, space or sampler seed)."""
    from fedinvert.sweep.store import check_study_folder

    if folder.is_symlink() or not folder.exists():
        check_study_folder(folder, shown)  # a link, or a folder to create: the sweep's checks are the same
        return
    if not folder.is_dir():
        raise ConfigError(f"out={shown} is a file, not a folder; choose another out=")
    try:
        entries = {p.name for p in folder.iterdir()}
    except OSError as err:
        raise ConfigError(f"out={shown}: cannot read the folder ({err.strerror or err})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"out={shown}: the folder is not writable")
    if not entries - {LOCK}:
        return
    if MARKER not in entries:
        raise ConfigError(f"out={shown} exists, is not empty and is not a tune folder (no {MARKER}); choose"
                          " another out=")
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"out={shown}: cannot read its {MARKER} ({err})") from None
    for key, value in identity.items():
        if not isinstance(info, dict) or info.get(key) != value:
            what = {"config_id": "scenario", "space": "search space", "sampler_seed": "sampler seed"}[key]
            raise ConfigError(f"out={shown} holds a tune with another {what}; resume it with its own command"
                              f" ({info.get('command', '?') if isinstance(info, dict) else '?'}) or choose another out=")


# -- running -------------------------------------------------------------------------------------------
def _name(number: int) -> str:
    return f"{number:04d}"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold ``folder/.tune.lock`` (one driver per tune folder)."""
    handle = (folder / LOCK).open("a")
    try:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no advisory locks on this platform: one driver is the user's promise
            pass
        except OSError:
            raise ConfigError(f"out={folder}: another tune is running on it") from None
        yield
    finally:
        handle.close()


def _quiet_optuna(optuna: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # trial 0 runs the configuration's value even where a user's range leaves it out
    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")


class _Tune:
    """The driver of one started tune: its study, storage and folder."""

    def __init__(self, plan: TunePlan) -> None:
        import optuna

        self.plan = plan
        self.optuna = optuna
        self.trials_dir = plan.folder / "trials"
        startup = max(2, min(10, plan.trials // 3))
        sampler = optuna.samplers.TPESampler(seed=plan.sampler_seed, n_startup_trials=startup,
                                             constant_liar=plan.jobs > 1)
        try:
            self.storage = optuna.storages.RDBStorage(f"sqlite:///{(plan.folder / 'tune.db').resolve()}")
            self.study = optuna.create_study(study_name=STUDY_NAME, storage=self.storage, sampler=sampler,
                                             direction="minimize", load_if_exists=True)
        except Exception as err:  # a damaged or foreign database: one line, not SQLAlchemy's traceback
            raise ConfigError(f"out={plan.folder}: tune.db is not a readable Optuna study"
                              f" ({type(err).__name__}); move it away or choose another out=") from None
        self.study_id = self.storage.get_study_id_from_name(STUDY_NAME)

    # -- the study's state
    def trials(self, *states: Any) -> list[Any]:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def finished(self) -> int:
        state = self.optuna.trial.TrialState
        return sum(t.state == state.COMPLETE or (t.state == state.FAIL and "error" in t.user_attrs)
                   for t in self.trials())

    def _set(self, number: int, key: str, value: Any) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.storage.set_trial_user_attr(trial_id, key, value)

    # -- telling
    def complete(self, number: int, metrics: dict[str, Any]) -> bool:
        """Tell a finished run; False (and the trial failed) when it recorded no finite distance."""
        distance = metrics.get("distance")
        if not isinstance(distance, (int, float)) or not math.isfinite(distance):
            self.fail(number, f"the run recorded no finite gradient distance ({distance!r})")
            return False
        reference = metrics.get("reference")
        reported = {k: metrics.get(k) for k in REPORTED if k != "reference_psnr"}
        reported["reference_psnr"] = reference.get("psnr") if isinstance(reference, dict) else None
        reported["stage"] = next((s.get("stage") for s in metrics.get("stages") or [] if s.get("chosen")), None)
        for key, value in reported.items():
            self._set(number, key, value)
        self._set(number, "folder", f"trials/{_name(number)}")
        self.study.tell(number, float(distance))
        return True

    def fail(self, number: int, error: str) -> None:
        self._set(number, "error", error)
        self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        self._discard(number)

    def interrupted(self, number: int, params: dict[str, Any], attrs: dict[str, Any]) -> None:
        """Mark a trial that did not finish as failed, after enqueueing its parameters again (once)."""
        waiting = self.trials(self.optuna.trial.TrialState.WAITING)
        if not any(t.user_attrs.get("retry_of") == number for t in waiting):
            self.study.enqueue_trial(params, user_attrs={"retry_of": number, "default": bool(attrs.get("default"))})
        self._set(number, "interrupted", True)
        self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        self._discard(number)

    def _discard(self, number: int) -> None:
        """Remove what an unfinished trial's run left (its folder, a killed run's temporary sibling)."""
        from fedinvert.run_folder import clean_stale

        folder = self.trials_dir / _name(number)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
        if self.trials_dir.is_dir():
            clean_stale(folder)

    # -- recovery
    def recover(self, summary: TuneSummary) -> None:
        """Trials a dead tune left running: adopt a complete run folder, else mark failed and run again."""
        for trial in self.trials(self.optuna.trial.TrialState.RUNNING):
            metrics = _finished_metrics(self.trials_dir / _name(trial.number))
            if metrics is not None and self.complete(trial.number, metrics):
                summary.adopted += 1
                continue
            self.interrupted(trial.number, dict(trial.params), dict(trial.user_attrs))
            summary.recovered += 1

    def ensure_default(self) -> None:
        """Enqueue trial 0, the configuration as given, unless the study already holds it."""
        if not any(t.user_attrs.get("default") for t in self.trials()):
            self.study.enqueue_trial(self.plan.space.defaults, user_attrs={"default": True})

    # -- one batch
    def run_batch(self, size: int, summary: TuneSummary, on_told: Any) -> bool:
        """Ask for ``size`` trials, run them, tell each as it finishes; False when interrupted (Ctrl-C)."""
        from fedinvert.sweep.executors import Task, run_local, run_ray

        plan = self.plan
        asked: dict[str, Any] = {}
        tasks: list[Task] = []
        argv = plan.command or ["fedinvert", "tune", f"out={plan.folder}"]
        try:
            for _ in range(size):
                trial = self.study.ask()
                asked[_name(trial.number)] = trial
                params = plan.space.suggest(trial)
                try:
                    cfg = plan.trial_config(params)
                except FedinvertError as err:
                    self.fail(trial.number, " ".join(str(err).split()))
                    summary.failed += 1
                    del asked[_name(trial.number)]
                    continue
                tasks.append(Task(_name(trial.number), cfg, argv))
            self.trials_dir.mkdir(exist_ok=True)
            self.write_outputs(self.rows())  # trials.csv shows the batch running
            if plan.executor == "ray":
                outcomes = run_ray(tasks, self.trials_dir, jobs=plan.jobs, threads=plan.threads, address=plan.address)
            else:
                outcomes = run_local(tasks, self.trials_dir, jobs=plan.jobs, threads=plan.threads)
            for outcome in outcomes:
                trial = asked.pop(outcome.id)
                self._tell(trial, outcome, summary)
                on_told()
        except KeyboardInterrupt:
            return False
        finally:
            for trial in asked.values():  # asked but not told: a Ctrl-C (or a worker lost) stopped them
                with contextlib.suppress(Exception):
                    self.interrupted(trial.number, dict(trial.params), dict(trial.user_attrs))
        return True

    def _tell(self, trial: Any, outcome: Any, summary: TuneSummary) -> None:
        if outcome.status == "ok" and outcome.metrics is not None:
            if self.complete(trial.number, outcome.metrics):
                summary.finished += 1
            else:
                summary.failed += 1
        elif outcome.status == "failed":
            self.fail(trial.number, outcome.error or "the run failed")
            summary.failed += 1
        else:  # interrupted: run_local raises KeyboardInterrupt next
            self.interrupted(trial.number, dict(trial.params), dict(trial.user_attrs))

    # -- the record
    def rows(self) -> list[TrialRow]:
        state = self.optuna.trial.TrialState
        rows = []
        for t in self.trials():
            if t.state == state.WAITING:
                continue
            if t.state == state.COMPLETE:
                status = "complete"
            elif t.state == state.FAIL:
                status = "failed" if "error" in t.user_attrs else "interrupted"
            else:
                status = "running"
            wall = None
            if t.datetime_start is not None and t.datetime_complete is not None:
                wall = (t.datetime_complete - t.datetime_start).total_seconds()
            rows.append(TrialRow(
                number=t.number, status=status, params=dict(t.params),
                objective=t.value if t.state == state.COMPLETE else None,
                default=bool(t.user_attrs.get("default")), retry_of=t.user_attrs.get("retry_of"),
                wall_seconds=wall, reported={k: t.user_attrs.get(k) for k in REPORTED},
                error=t.user_attrs.get("error"), folder=t.user_attrs.get("folder", "") if status == "complete" else "",
            ))
        return rows

    def write_outputs(self, rows: list[TrialRow]) -> None:
        from fedinvert.sweep.store import atomic_write

        plan = self.plan
        atomic_write(plan.folder / "trials.csv", trials_csv(rows, plan.space.keys))
        seed = plan.config.get("seed", 0)
        command = " ".join(plan.command) or "fedinvert tune"
        default = default_row(rows)
        atomic_write(plan.folder / "default.yaml", preset_text(plan.config, [
            "fedinvert tune: the configuration the tune started from (trial 0)",
            f"searched {', '.join(plan.space.keys)} on seed {seed}: {command}",
            *([] if default is None else [f"trial {default.number}: distance {default.objective:.6g},"
                                          f" PSNR {_db(default.reported.get('psnr'))}"]),
        ]))
        best = select_best(rows)
        if best is None:
            return
        complete = sum(r.status == "complete" for r in rows)
        atomic_write(plan.folder / "best.yaml", preset_text(plan.trial_config(best.params), [
            f"fedinvert tune: the best of {complete} complete trials by the gradient distance on the observed update"
            " (PSNR is never used to choose)",
            f"trial {best.number}: distance {best.objective:.6g}, PSNR {_db(best.reported.get('psnr'))}"
            + ("" if default is None else f"; default (trial {default.number}) distance {default.objective:.6g},"
               f" PSNR {_db(default.reported.get('psnr'))}"),
            f"searched on seed {seed} ({params_text(best.params)}): {command}",
            "check it on other private batches (other seeds) before trusting it; load it with preset=THIS_FILE",
        ]))


def _db(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f} dB"


def _finished_metrics(folder: Path) -> dict[str, Any] | None:
    """A complete, uninterrupted run folder's metrics.json, or None."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        info = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or not isinstance(info, dict) or info.get("interrupted"):
        return None
    return metrics


def _describe(plan: TunePlan) -> dict[str, Any]:
    return {
        **plan.identity,
        "attack": plan.attack,
        "config": plan.config,
        "space_text": [p.describe() for p in plan.space.params],
        "defaults": plan.space.defaults,
        "objective": "distance: the attack's pure gradient distance on the observed update (metrics.json)",
        "sampler": "TPE",
        "trials": plan.trials,
        "command": " ".join(plan.command),
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def run_tune(plan: TunePlan, *, progress: bool = True) -> TuneSummary:
    """Run the trials ``plan``'s study is missing (see the module docstring); write trials.csv, best.yaml and
    default.yaml. Ctrl-C stops after the trials in flight are marked interrupted; every finished one stays."""
    import optuna
    from tqdm import tqdm

    from fedinvert.sweep.store import atomic_write

    t0 = time.perf_counter()
    _quiet_optuna(optuna)
    folder = plan.folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"out={folder}: cannot create the tune folder ({err.strerror or err})") from None
    with _locked(folder):
        atomic_write(folder / MARKER, json.dumps(_describe(plan), indent=2, default=str) + "\n")
        tune = _Tune(plan)
        summary = TuneSummary(folder, target=plan.trials, before=0, attack=plan.attack,
                              seed=int(plan.config.get("seed", 0)), space=[p.describe() for p in plan.space.params])
        ray_started = False
        bar = None
        try:
            tune.recover(summary)
            summary.before = tune.finished() - summary.adopted
            tune.ensure_default()
            if plan.executor == "ray":
                ray_started = _start_ray(plan)
            bar = tqdm(total=plan.trials, initial=min(plan.trials, tune.finished()), unit="trial",
                       disable=not progress, desc=f"tune {plan.attack}", dynamic_ncols=True)

            def told() -> None:
                bar.update(1)  # type: ignore[union-attr]
                tune.write_outputs(tune.rows())

            while (left := plan.trials - tune.finished()) > 0:
                if not tune.run_batch(min(plan.jobs, left), summary, told):
                    summary.interrupted = True
                    break
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            if bar is not None:
                bar.close()
            if ray_started:
                import ray

                ray.shutdown()
            summary.rows = tune.rows()
            tune.write_outputs(summary.rows)
    summary.seconds = time.perf_counter() - t0
    return summary


def _start_ray(plan: TunePlan) -> bool:
    """Start Ray once for the whole tune (`run_ray` then neither starts nor stops it per batch)."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    if ray.is_initialized():
        return False
    if plan.address:
        ray.init(address=plan.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=plan.jobs, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    return True
