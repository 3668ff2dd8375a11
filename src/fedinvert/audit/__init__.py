"""`fedinvert audit key=value … [--budget quick|standard|full] out=DIR`: audit the user's own FL setup.

The ``key=value`` configuration is the user's scenario with the keys of ``fedinvert attack`` — their victim (a
registry name with options, or their own ``package.module:function`` with ``model.checkpoint=PATH``), their data
(any data set, ``dataset=folder dataset.root=DIR`` for their own images), their FL configuration (``protocol``,
``protocol.local_epochs``, ``protocol.local_batch_size``, ``protocol.lr``, ``batch_size``) and their defences.
The audit builds a battery (`fedinvert.audit.battery`): one attack per family that applies, the setup without
defences, each defence stronger, the survey's protocol / network levers; runs it as an in-memory study through
the sweep machinery (`fedinvert.sweep.run_sweep`, local executor) into ``DIR`` — every run stored as it
finishes, so a stopped audit resumes where it stopped and repeats no run; measures each change's accuracy cost
(`fedinvert.audit.utility`); runs ``verify-model``'s checks on the model the client receives; and writes
``DIR/audit.txt`` (one screen, also printed), ``DIR/audit.json``, ``DIR/audit.html`` (self-contained) and
``DIR/report.html`` (the study report of every run) beside the sweep's ``results.csv``.

Every input is checked before any work: an unknown key, a bad budget, an unwritable ``out`` or an ``out`` that
holds another audit (or anything else) is one line and exit code 2, with nothing written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedinvert.audit.battery import BUDGETS, Budget, Condition, build_battery
from fedinvert.errors import ConfigError, FedinvertError

__all__ = ["BUDGETS", "AuditPlan", "AuditSummary", "Budget", "Condition", "plan_audit", "run_audit"]

log = logging.getLogger(__name__)

MARKER = "audit-plan.json"
BATTERY = "battery.yaml"
UTILITY = "utility.json"
_SET_BY_AUDIT = ("overwrite", "progress", "observation", "dataset.batch", "dataset.indices")


@dataclass(frozen=True)
class AuditPlan:
    """An audit checked before any work: the scenario, budget, battery, its runs and the folder."""

    overrides: list[str]
    config: dict[str, Any]
    budget_name: str
    budget: Budget
    conditions: list[Condition]
    runs: list[Any]  # fedinvert.sweep.PlannedRun
    notes: list[str]
    folder: Path
    threads: int | None
    command: list[str]

    @property
    def identity(self) -> str:
        """What a resumed audit must share with the one that made the folder: its runs and its budget."""
        text = json.dumps({"runs": sorted(r.id for r in self.runs), "budget": self.budget.as_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def condition_runs(self, key: str) -> list[Any]:
        return [r for r in self.runs if r.values["condition"] == key]


@dataclass
class AuditSummary:
    """What the audit did and its one-screen text."""

    folder: Path
    lines: list[str] = field(default_factory=list)
    interrupted: bool = False
    failed: int = 0
    seconds: float = 0.0
    stored_before: int = 0
    finished_now: int = 0


def _check_folder(folder: Path, shown: str, identity: str) -> None:
    from fedinvert.sweep.store import check_study_folder

    if folder.is_symlink() or not folder.exists():
        check_study_folder(folder, shown)
        return
    if not folder.is_dir():
        raise ConfigError(f"out={shown} is a file, not a folder; choose another out=")
    try:
        entries = {p.name for p in folder.iterdir()}
    except OSError as err:
        raise ConfigError(f"out={shown}: cannot read the folder ({err.strerror or err})") from None
    if not entries:
        check_study_folder(folder, shown)
        return
    if MARKER not in entries:
        raise ConfigError(f"out={shown} exists, is not empty and is not an audit folder (no {MARKER}); choose"
                          " another out=")
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"out={shown}: cannot read its {MARKER} ({err})") from None
    if not isinstance(info, dict) or info.get("identity") != identity:
        command = info.get("command", "?") if isinstance(info, dict) else "?"
        raise ConfigError(f"out={shown} holds an audit of another configuration or budget; resume it with its own"
                          f" command ({command}) or choose another out=")
    check_study_folder(folder, shown)  # writable


def _split(overrides: list[str]) -> tuple[str | None, list[str], list[str], dict[str, Any]]:
    """(out, the scenario's overrides, the user's attack.<key> overrides, budget.<field> values)."""
    import yaml

    out = None
    scenario: list[str] = []
    attack: list[str] = []
    budget: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"argument {item!r} is not key=value (the audit folder is out=DIR)")
        if key == "out":
            out = value
        elif key.startswith("budget."):
            try:
                budget[key[len("budget."):]] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"{key}: cannot read the value {value!r}") from None
        elif key in ("attack", "attack.name", "preset"):
            raise ConfigError(f"{key}: the audit runs one attack per family itself; attack.<key>=value tunes its"
                              " optimisation-based attack (Inverting Gradients)")
        elif key.startswith("attack."):
            attack.append(item)
        elif key in _SET_BY_AUDIT or key.startswith("dataset.batch"):
            raise ConfigError(f"{key}: the audit sets it for every run (its private batches are dataset.batch"
                              " 0, 1, …); leave it out")
        else:
            scenario.append(item)
    return out, scenario, attack, budget


def plan_audit(overrides: list[str], *, budget: str = "quick", threads: int | None = None,
               command: list[str] | None = None) -> AuditPlan:
    """Every check an audit makes before any work (see the module docstring).

    Args:
        overrides: the user's ``key=value`` scenario, ``out=DIR`` and optional ``budget.<field>=value``.
        budget: ``quick``, ``standard`` or ``full`` (`BUDGETS`).
        threads: torch CPU threads for the runs and the accuracy measurement (None: torch's choice).
        command: the command line, recorded in the folder and each run's run.json.

    Raises:
        ConfigError: one line naming what is wrong; nothing is written.
    """
    from fedinvert.config import resolve_config
    from fedinvert.defenses import build_defenses
    from fedinvert.sweep.study import PlannedRun, config_id

    if budget not in BUDGETS:
        raise ConfigError(f"--budget: unknown budget {budget!r}; known: {', '.join(BUDGETS)}")
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"--threads must be a whole number ≥ 1, got {threads!r}")
    out, scenario, user_attack, budget_keys = _split(list(overrides))
    if not out:
        raise ConfigError("audit needs out=DIR, the audit folder (created, or resumed when it holds this audit)")
    chosen = BUDGETS[budget].with_overrides(budget_keys)
    cfg = resolve_config(["attack.name=inverting_gradients", *scenario, *user_attack])
    defenses = {d.name: dict(d.spec().params) for d in build_defenses(dict(cfg["defense"]))}
    conditions, notes = build_battery(cfg, chosen, user_attack=user_attack, defenses=defenses)
    conditions, notes = _fit_data(cfg, chosen, conditions, notes)
    seed = int(cfg["seed"])
    runs: list[PlannedRun] = []
    seen: dict[str, str] = {}
    kept: list[Condition] = []
    for condition in conditions:
        planned = []
        for i in range(chosen.batches):
            try:
                run_cfg = resolve_config([*scenario, *condition.overrides, f"seed={seed + i}", f"dataset.batch={i}"])
            except FedinvertError as err:
                raise ConfigError(f"audit condition {condition.key}: {err}") from None
            planned.append(PlannedRun(config_id(run_cfg), {"condition": condition.key, "seed": seed + i,
                                                           "dataset.batch": i}, run_cfg))
        same = next((seen[r.id] for r in planned if r.id in seen), None)
        if same is not None:
            notes.append(f"{condition.key} is the same runs as {same}; measured once")
            continue
        seen.update({r.id: condition.key for r in planned})
        runs += planned
        kept.append(condition)
    plan = AuditPlan(overrides=scenario + user_attack, config=cfg, budget_name=budget, budget=chosen,
                     conditions=kept, runs=runs, notes=notes, folder=Path(out), threads=threads,
                     command=list(command or []))
    _check_folder(plan.folder, out, plan.identity)
    return plan


def _fit_data(cfg: dict[str, Any], budget: Budget, conditions: list[Condition],
              notes: list[str]) -> tuple[list[Condition], list[str]]:
    """Refuse a data set too small for the private batches; drop a larger-batch lever it cannot hold."""
    from fedinvert.data.loader import build_dataset
    from fedinvert.defenses import build_defenses, client_count

    ds = cfg["dataset"]
    try:
        dataset = build_dataset(ds["name"], root=ds.get("root"), image_size=cfg.get("image_size"),
                                channels=cfg.get("channels"), num_classes=cfg.get("num_classes"))
        split = ds.get("split") or ("test" if "test" in getattr(dataset, "splits", ("test",)) else dataset.splits[0])
        size = int(dataset.size(split=split))
    except FedinvertError:
        raise
    except Exception as err:  # a data set that cannot be opened: one line
        raise ConfigError(f"dataset {ds['name']}: cannot be read ({type(err).__name__}: {err})") from None
    per_batch = int(cfg["batch_size"]) * max(client_count(build_defenses(c.defense)) for c in conditions)
    if per_batch * budget.batches > size:
        raise ConfigError(f"dataset {ds['name']} ({split} split) holds {size} images; {budget.batches} private"
                          f" batches of {per_batch} need {per_batch * budget.batches} (lower budget.batches or"
                          " batch_size)")
    kept = []
    for c in conditions:
        if c.key == "lever:batch" and 4 * per_batch * budget.batches > size:
            notes.append(f"lever batch not measured: {budget.batches} batches of {4 * per_batch} exceed the"
                         f" {size} images of {ds['name']}")
            continue
        kept.append(c)
    return kept, notes


# -- running ---------------------------------------------------------------------------------------------
def _battery_yaml(plan: AuditPlan) -> str:
    import yaml

    data = {
        "audit": {"budget": plan.budget_name, **plan.budget.as_dict()},
        "scenario": plan.overrides,
        "conditions": [{"key": c.key, "kind": c.kind, "label": c.label, "overrides": list(c.overrides)}
                       for c in plan.conditions],
        "replicates": {"seed": [r.values["seed"] for r in plan.condition_runs("op")],
                       "dataset.batch": [r.values["dataset.batch"] for r in plan.condition_runs("op")]},
    }
    return "# the battery of a fedinvert audit (fedinvert.audit.battery): conditions × private batches\n" + \
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def run_audit(plan: AuditPlan, *, progress: bool = True) -> AuditSummary:
    """Run the battery's missing runs, measure accuracy costs, verify the received model, write the report.

    Ctrl-C stops after the run in flight; every stored run (and every finished accuracy measurement) stays,
    and the same command resumes.
    """
    import torch

    from fedinvert.sweep import SweepPlan, run_sweep
    from fedinvert.sweep.store import atomic_write
    from fedinvert.sweep.study import Study

    t0 = time.perf_counter()
    folder = plan.folder
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / BATTERY, _battery_yaml(plan))
        atomic_write(folder / MARKER, json.dumps({"identity": plan.identity, "command": " ".join(plan.command),
                                                  "budget": plan.budget_name, "config": plan.config},
                                                 indent=2, default=str) + "\n")
    except OSError as err:
        raise ConfigError(f"out={folder}: cannot write the audit folder ({err.strerror or err})") from None
    replicates = plan.condition_runs("op")
    study = Study(name="audit", description=f"fedinvert audit (budget {plan.budget_name}): {' '.join(plan.overrides)}",
                  base={}, axes={"condition": [c.key for c in plan.conditions]},
                  zips=[{"seed": [r.values["seed"] for r in replicates],
                         "dataset.batch": [r.values["dataset.batch"] for r in replicates]}],
                  replicates=["seed", "dataset.batch"], source=str(folder / BATTERY))
    sweep = SweepPlan(study, plan.runs, folder, "local", 1, None, plan.threads, False,
                      plan.command or ["fedinvert", "audit", f"out={folder}"])
    done = run_sweep(sweep, progress=progress)
    summary = AuditSummary(folder, interrupted=done.interrupted, failed=done.failed, stored_before=done.already,
                           finished_now=done.finished)
    if done.interrupted:
        summary.lines = [done.line()]
        summary.seconds = time.perf_counter() - t0
        return summary
    from fedinvert.audit.report import write_outputs

    summary.lines = write_outputs(plan, done, t0)
    summary.seconds = time.perf_counter() - t0
    return summary
