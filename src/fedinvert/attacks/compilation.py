"""``attack.compile``: compile an attack's step only where compiling pays for itself (DESIGN §11).

``true`` compiles, ``false`` stays eager, and ``auto`` decides for each search (an attack run, a GIFD stage)
from a measured model of what compiling costs against what it saves:

* **saving** = steps × the eager step × (1 − `COMPILED_STEP_RATIO`). The eager step is timed on the search's
  own start: one untimed step, then `PROBE_STEPS` timed ones. The step is a pure function of the variables, so
  the probe changes nothing; its evaluations are not counted.
* **cost** = what compiling the same step cost the last time on this machine, recorded in
  ``fedinvert-compile-seconds.json`` inside the inductor's cache folder (``$TORCHINDUCTOR_CACHE_DIR``, else
  ``<tmp>/torchinductor_<user>``) beside the kernels that compilation left there, so clearing that cache
  forgets the record too; beside it the compiled / eager step ratio the last compiled run measured, which
  replaces `COMPILED_STEP_RATIO` in the saving. Without a record: the cold estimate `COLD_SECONDS` +
  `COLD_SECONDS_PER_TENSOR` × the parameter tensors of the models the step runs (victim and generator).
* It compiles only when the saving exceeds the cost. A saving below `WARM_FLOOR_SECONDS` decides "eager"
  without reading the record. A step compiled earlier in the same process (a sweep worker's second run) costs
  nothing: dynamo reuses its code.
* With several restarts, the uncompiled step is looped, vmapped or grouped, whichever the probe finds fastest,
  and a compiled step follows that choice (`choose`).

The constants are measured by ``benchmarks/compile_cost.py`` and ``benchmarks/speed.py`` (one CPU thread;
``benchmarks/results/compile_cost.log``). Every compiled search records its measured compile seconds, so the
second run of a victim decides from its own number. The decision and its figures go to ``run.json``
(``attack_details.compile``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import torch
from torch import nn

from fedinvert.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: compiled step / eager step without a measurement for the step: above the small victims' 0.61-0.71
#: (benchmarks/results/speed.log); a large victim's own measured ratio (ResNet-18: 0.89-0.93) replaces it
COMPILED_STEP_RATIO = 0.75
#: cold compilation (imports, tracing, code generation) without a record: seconds, plus seconds per parameter
#: tensor of the models the step runs (benchmarks/results/compile_cost.log)
COLD_SECONDS = 18.0
COLD_SECONDS_PER_TENSOR = 1.5
#: a saving this small is not worth a decision: a fresh process's warm compilation took 4.1-9.8 s here
#: (compile_cost.log); only a step compiled earlier in the same process costs less
WARM_FLOOR_SECONDS = 1.0
#: timed eager steps of the probe (after one untimed step): its 3 evaluations are extra work, 1 % of a 300-step
#: run, 5 % of a 60-step GIFD stage (each stage probes; with several restarts the three uncompiled forms are probed)
PROBE_STEPS = 2
RECORD_NAME = "fedinvert-compile-seconds.json"
FORMS_NAME = "fedinvert-restart-forms.json"
"""Beside the compile record: the uncompiled form (looped, vmapped or grouped restarts) each step's first probe
on this machine chose, so every later run of it steps the same way and gives the same numbers (`_fastest_eager`)."""
SETTINGS = ("auto", "true", "false")


def check_setting(setting: bool | str) -> bool | str:
    """``attack.compile`` as given: a bool, or one of ``auto``, ``true``, ``false``."""
    if isinstance(setting, bool) or setting in SETTINGS:
        return setting
    raise ConfigError(f"attack.compile must be auto, true or false, got {setting!r}")


def forced(setting: bool | str) -> bool | None:
    """True/False for a forced setting, None for ``auto``."""
    check_setting(setting)
    if isinstance(setting, bool):
        return setting
    return None if setting == "auto" else setting == "true"


#: the forms of a search's step: plain autograd (restarts looped), vmapped over restarts, compiled (restarts
#: vmapped), compiled with its restarts looped (one compiled chain called per restart), and plain autograd with
#: the restarts as groups of one victim (`fedinvert.attacks.grouped`)
EAGER, VMAP, COMPILED, COMPILED_LOOP, GROUPED = "eager", "vmap", "compiled", "compiled_loop", "grouped"
UNCOMPILED = (EAGER, VMAP, GROUPED)


class MatcherFlags(TypedDict):
    functional: bool
    compile: bool
    loop_restarts: bool
    grouped_restarts: bool


def functional(form: str) -> bool:
    """Whether a step in ``form`` is the vmappable pure one (every form but the plain-autograd `EAGER`, `GROUPED`)."""
    return form not in (EAGER, GROUPED)


def matcher_flags(form: str) -> MatcherFlags:
    """`GradientMatcher`'s keywords for a step in ``form``: the `functional` forms are the vmappable pure one,
    the compiled ones compile it, `COMPILED_LOOP` calls its compiled chain once per restart, `GROUPED` runs the
    restarts as groups of one victim."""
    return MatcherFlags(functional=functional(form), compile=form in (COMPILED, COMPILED_LOOP),
                        loop_restarts=form == COMPILED_LOOP, grouped_restarts=form == GROUPED)


@dataclass
class CompileDecision:
    """What ``attack.compile`` decided for one search, and from what (all seconds; None where not measured)."""

    setting: str
    reason: str
    steps: int = 0
    eager_step_seconds: float | None = None
    predicted_saving_seconds: float | None = None
    predicted_compile_seconds: float | None = None
    form: str = EAGER  # the step's form: eager (restarts looped), vmap, grouped, compiled or compiled_loop
    looped_step_seconds: float | None = None  # the probe's uncompiled forms, when restarts > 1
    vmapped_step_seconds: float | None = None
    grouped_step_seconds: float | None = None
    grouped_refusal: str | None = None  # why the restarts could not run as groups
    form_source: str | None = None  # restarts > 1: probed, recorded on this machine, or chosen in this process
    step_ratio: float | None = None  # compiled / eager step the prediction assumed
    compile_seconds: float | None = None  # measured, when it compiled
    probe_calls: int | None = None  # steps the probe ran (1: eager_step_seconds is the first step's, an upper bound)
    measured_step_ratio: float | None = None  # compiled step (measured over the run) / probed eager step

    @property
    def compiled(self) -> bool:
        return self.form in (COMPILED, COMPILED_LOOP)

    def as_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if v is not None}
        return {"setting": fields.pop("setting"), "compiled": self.compiled, **fields}


def inductor_cache_dir() -> Path:
    """The inductor's cache folder, found as torch finds it but without importing the inductor (≈ 1 s)."""
    configured = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if configured:
        return Path(configured).absolute()
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        getuid = getattr(os, "getuid", None)
        user = f"uid_{getuid()}" if callable(getuid) else "unknown_user"
    return Path(tempfile.gettempdir()) / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def record_path() -> Path:
    return inductor_cache_dir() / RECORD_NAME


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any], what: str) -> None:
    """Write ``data`` to ``path`` atomically; a failure only logs (a record is an optimisation)."""
    from fedinvert.sweep.store import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError as err:
        log.debug("could not record the %s in %s: %s", what, path, err)


def _read_records() -> dict[str, dict[str, float]]:
    """key -> {"seconds": compile seconds, "ratio": compiled / eager step (when measured)}; damaged entries are
    left out."""
    data = _read_json(record_path())
    records = {}
    for key, entry in data.items():
        if isinstance(entry, dict):
            kept = {f: float(v) for f, v in entry.items()
                    if f in ("seconds", "ratio") and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0}
            if "seconds" in kept:
                records[key] = kept
    return records


def recorded_form(key: str) -> str | None:
    """The restart form (`EAGER`, `VMAP` or `GROUPED`) recorded for ``key`` on this machine, or None."""
    form = _read_json(inductor_cache_dir() / FORMS_NAME).get(key)
    return form if form in UNCOMPILED else None


def remember_form(key: str, form: str) -> None:
    """Record ``form`` as ``key``'s restart form on this machine (atomically; a failure only logs)."""
    path = inductor_cache_dir() / FORMS_NAME
    _write_json(path, {**_read_json(path), key: form}, "restart form")


def recorded(key: str) -> dict[str, float]:
    """What this machine recorded for ``key``: ``seconds`` (compile seconds) and, once measured, ``ratio``
    (compiled / eager step); empty without a record."""
    return _read_records().get(key, {})


def recorded_seconds(key: str) -> float | None:
    """The compile seconds last recorded for ``key`` on this machine, or None."""
    return recorded(key).get("seconds")


def recorded_ratio(key: str) -> float | None:
    """The compiled / eager step ratio last measured for ``key`` on this machine, or None."""
    return recorded(key).get("ratio")


#: keys compiled in this process: a later search of the same key here reuses dynamo's compiled code (measured:
#: 0.00 s for the second to eleventh IG run of one LeNet in one process), so it costs about nothing
_COMPILED_HERE: set[str] = set()


def remember(key: str, seconds: float) -> None:
    """Record ``seconds`` as what compiling ``key`` costs a fresh process (written atomically; a failure only
    logs). Only the first compilation of ``key`` in a process is recorded: later ones reuse its code."""
    if key in _COMPILED_HERE:
        return
    _COMPILED_HERE.add(key)
    _update(key, seconds=round(float(seconds), 3))


def remember_ratio(key: str, ratio: float) -> None:
    """Record the measured compiled / eager step ratio of ``key`` beside its compile seconds (not without)."""
    if math.isfinite(ratio) and ratio > 0:
        _update(key, existing_only=True, ratio=round(float(ratio), 3))


def _update(key: str, *, existing_only: bool = False, **fields: float) -> None:
    records = _read_records()
    if existing_only and key not in records:
        return
    records[key] = {**records.get(key, {}), **fields}
    _write_json(record_path(), records, "compile time")


class CompileClock:
    """What compiling one step costs, and what the compiled step then takes: shared by every compiled step
    object (`GradientMatcher`, GGL's scorer), whose ``clock`` it is.

    ``compile(fn)`` wraps `torch.compile` (the first in a process imports dynamo and the inductor: part of the
    cost). ``call(fn)`` runs one whole step: the first call's seconds are compile seconds too, recorded under
    ``key`` (set by `choose`); later calls give ``step_seconds``, their mean, on the CPU only (asynchronous
    devices are not timed per step).

    Guards: the first call of a step runs with all of dynamo's guards, so it compiles (or picks) the graph for
    this step's own inputs, victim and constants. Every later call of it has the same: the same function on
    tensors of the same shapes, dtypes and devices, the same victim and observed update. They run under
    ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``, which evaluates only the guards that tell the
    cached graphs of that code apart (other steps compiled from the same function: another GIFD stage, another
    batch size). Checking all of them (about 300 for LeNet: every parameter, the observed update, the labels)
    took 115 µs a call, 3 % of a compiled LeNet step at B = 8 (docs/speed.md).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.key: str | None = None
        self._called = False
        self._step_time = 0.0
        self._steps = 0

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        start = time.perf_counter()
        compiled = torch.compile(fn, dynamic=False)
        self.seconds += time.perf_counter() - start
        return compiled

    def call(self, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        if self._called:  # guards checked on the first call only (see the class docstring)
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                out = fn()
        else:
            out = fn()
        elapsed = time.perf_counter() - start
        if not self._called:
            self._called = True
            self.seconds += elapsed
            if self.key is not None:
                remember(self.key, self.seconds)
        elif self.device.type == "cpu":
            self._step_time += elapsed
            self._steps += 1
        return out

    @property
    def step_seconds(self) -> float | None:
        """Mean seconds of a compiled step after the first (None before two steps or off the CPU)."""
        return self._step_time / self._steps if self._steps else None


def step_key(label: str, modules: Iterable[nn.Module], shapes: Iterable[tuple[int, ...]], device: torch.device) -> str:
    """A search's identity for the record: the attack's label, the modules' parameter shapes, the variables'
    shapes, the device type and the torch version."""
    parts = [label, str(device.type), torch.__version__]
    for module in modules:
        parts.append(type(module).__name__)
        parts.extend(f"{n}:{tuple(p.shape)}" for n, p in module.named_parameters())
    parts.extend(str(tuple(s)) for s in shapes)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def cold_estimate(tensors: int) -> float:
    """Predicted seconds of a first compilation (no record) of a step through ``tensors`` parameter tensors."""
    return COLD_SECONDS + COLD_SECONDS_PER_TENSOR * tensors


def timed_probe(probe: Callable[[], Any], device: torch.device, *,
                settled: Callable[[float], bool] | None = None) -> float:
    """Seconds of one eager step: one untimed call, then the mean of `PROBE_STEPS` timed ones. Where ``settled``
    holds for the first call's seconds, those are returned without the timed calls: the first call also warms
    up, so its time bounds the step from above (a decision that this bound already settles needs no more)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    probe()
    sync()
    first = time.perf_counter() - start
    if settled is not None and settled(first):
        return first
    start = time.perf_counter()
    for _ in range(PROBE_STEPS):
        probe()
    sync()
    return (time.perf_counter() - start) / PROBE_STEPS


def below_floor(steps: int) -> Callable[[float], bool]:
    """Whether an eager step of the given seconds saves at most `WARM_FLOOR_SECONDS` over ``steps`` compiled."""
    return lambda seconds: steps * seconds * (1 - COMPILED_STEP_RATIO) <= WARM_FLOOR_SECONDS


#: the faster eager form found for a key in this process, so repeated runs here take the same path
_EAGER_FORM_HERE: dict[str, str] = {}


def choose(
    setting: bool | str,
    *,
    steps: int,
    build: Callable[[str], T],
    probe: Callable[[T], Any],
    key: Callable[[], str],
    tensors: Callable[[], int],
    device: torch.device,
    try_vmap: bool = False,
    forms: Sequence[str] = UNCOMPILED,
) -> tuple[T, CompileDecision]:
    """Build a search's step in the form ``setting`` and the measurements ask for.

    With ``try_vmap`` (a search of several restarts), the uncompiled step runs looped (`EAGER`), vmapped
    (`VMAP`) or grouped (`GROUPED`), whichever its probe finds fastest: vmap and grouping batch the restarts
    through the victim with per-restart parameter gradients, which wins on small victims and loses on large
    ones (`benchmarks/restart_forms.py` measures them). The choice is kept per key for the rest of the process and
    recorded on this machine (`FORMS_NAME`, beside the compile record), so later runs of the same step take the
    same form and give the same numbers; a compiled step follows it (`COMPILED_LOOP` where looping won).

    Args:
        setting: ``attack.compile``.
        steps: the steps the search will take.
        build: ``build(form)`` returns the search's step object (a `GradientMatcher`, a scorer, ...) in the form
            `EAGER`, `VMAP`, `COMPILED` or (only with ``try_vmap``) `GROUPED` and `COMPILED_LOOP`.
        probe: runs one step of a built object on the search's start (its result discarded).
        key: the search's identity for the compile-time record (`step_key`).
        tensors: parameter tensors of the models the step runs, for the cold estimate.
        device: where it runs (CUDA is synchronised around the probe).
        try_vmap: probe the uncompiled ``forms`` against each other (only for a step of several restarts or
            chains); else `EAGER` is the uncompiled form.
        forms: the uncompiled forms ``build`` knows, first the fallback (a study's batched private batches:
            `VMAP` and `GROUPED`).

    Returns:
        The built object and the `CompileDecision`. A compiled object's `CompileClock` (its ``clock``) is given
        the record's key, so it records what its compilation cost.
    """
    wanted = forced(setting)
    name = setting if isinstance(setting, str) else str(setting).lower()
    if wanted is not None and not try_vmap:  # one form to build, nothing to probe
        decision = CompileDecision(name, "forced by attack.compile", steps=steps)
        return (_compiled(decision, build, key, try_vmap=False) if wanted else build(EAGER)), decision
    eager, decision = _fastest_eager(name, steps=steps, build=build, probe=probe, key=key, device=device,
                                     try_vmap=try_vmap, forms=forms)
    if wanted is not None:
        decision.reason = "forced by attack.compile"
        return (_compiled(decision, build, key, try_vmap=True) if wanted else _uncounted(eager)), decision
    step = decision.eager_step_seconds
    assert step is not None
    if below_floor(steps)(step):  # no ratio measured here is lower
        decision.predicted_saving_seconds = steps * step * (1 - COMPILED_STEP_RATIO)
        bound = ", from the first step's time" if decision.probe_calls == 1 else ""
        decision.reason = (
            f"the saving (at most {decision.predicted_saving_seconds:.2f} s{bound}) is below {WARM_FLOOR_SECONDS:g} s,"
            " less than any compilation in a fresh process costs"
        )
        return _uncounted(eager), decision
    identity = key()
    record = recorded(identity)
    ratio = record.get("ratio")
    decision.step_ratio = COMPILED_STEP_RATIO if ratio is None else ratio
    saving = steps * step * (1 - decision.step_ratio)
    decision.predicted_saving_seconds = saving
    if identity in _COMPILED_HERE:
        cost, source = 0.0, "compiled already in this process"
    elif "seconds" in record:
        cost, source = record["seconds"], "recorded for this step"
    else:
        cost, source = cold_estimate(tensors()), "cold estimate"
    decision.predicted_compile_seconds = cost
    measured = "a default" if ratio is None else "measured"
    verdict = "exceeds" if saving > cost else "does not exceed"
    decision.reason = (
        f"the saving ({saving:.1f} s at a compiled/eager step of {decision.step_ratio:.2f}, {measured}) {verdict}"
        f" compiling ({cost:.1f} s, {source})"
    )
    if saving <= cost:
        return _uncounted(eager), decision
    log.info("attack.compile=auto compiles: %s", decision.reason)
    return _compiled(decision, build, key, try_vmap=try_vmap), decision


def _compiled(decision: CompileDecision, build: Callable[[str], T], key: Callable[[], str], *, try_vmap: bool) -> T:
    """Build the compiled step. It follows the probe's eager form (`COMPILED_LOOP` where looping the restarts
    won) and is given the record's key."""
    decision.form = COMPILED_LOOP if try_vmap and decision.form == EAGER else COMPILED
    built = build(decision.form)
    _give_key(built, key())
    return built


def _uncounted(built: T) -> T:
    """``built`` with the probe's evaluations taken off its count: they are not the search's."""
    if hasattr(built, "evaluations"):
        setattr(built, "evaluations", 0)  # noqa: B010  (any step object that counts its evaluations)
    return built


def _fastest_eager(
    name: str, *, steps: int, build: Callable[[str], T], probe: Callable[[T], Any], key: Callable[[], str],
    device: torch.device, try_vmap: bool, forms: Sequence[str] = UNCOMPILED,
) -> tuple[T, CompileDecision]:
    """The uncompiled step (looped, or vmapped or grouped when that probes faster) and a decision holding its
    timing."""
    decision = CompileDecision(name, "", steps=steps)
    if not try_vmap:
        eager = build(EAGER)
        calls = 0

        def counted() -> None:
            nonlocal calls
            calls += 1
            probe(eager)

        # (attack.compile=auto here) a first step too cheap to pay for compiling even at its warming-up time decides
        decision.form, decision.eager_step_seconds = EAGER, timed_probe(counted, device, settled=below_floor(steps))
        decision.probe_calls = calls
        return eager, decision
    identity = key()
    known = _EAGER_FORM_HERE.get(identity)
    decision.form_source = "chosen earlier in this process"
    if known is None:
        known = recorded_form(identity)
        decision.form_source = "recorded on this machine"
    if known not in forms:  # nothing usable recorded: probe them all
        known = None
    timings: dict[str, tuple[T, float]] = {}
    for form in forms if known is None else (known,):
        built = build(form)
        if not _refused(built, form, decision):
            seconds = timed_probe(lambda built=built: probe(built), device)  # type: ignore[misc]
            if not _refused(built, form, decision):  # (a grouped step is checked on its first call)
                timings[form] = built, seconds
    if not timings:  # the recorded grouped form is refused now: the fallback
        fallback = build(forms[0])
        timings[forms[0]] = fallback, timed_probe(lambda: probe(fallback), device)
    form = min(timings, key=lambda f: timings[f][1])
    _EAGER_FORM_HERE[identity] = form
    decision.form, decision.eager_step_seconds = form, timings[form][1]
    if known is None:
        decision.form_source = "probed"
        probed = {f: timings[f][1] for f in timings}
        decision.looped_step_seconds, decision.vmapped_step_seconds = probed.get(EAGER), probed.get(VMAP)
        decision.grouped_step_seconds = probed.get(GROUPED)
        remember_form(identity, form)  # later runs step alike, so the same config gives the same numbers here
    return timings[form][0], decision


def _refused(built: Any, form: str, decision: CompileDecision) -> bool:
    """Whether ``built`` is a `GROUPED` step that cannot group its restarts (it steps looped: no form of its own);
    the reason goes into ``decision``."""
    refusal = getattr(built, "grouped_refusal", None) if form == GROUPED else None
    if refusal:
        decision.grouped_refusal = refusal
    return bool(refusal)


def _give_key(built: Any, identity: str) -> None:
    """Tell a compiled step object's `CompileClock` the key to record its cost under."""
    clock = getattr(built, "clock", None)
    if clock is not None:
        clock.key = identity


def finished(decision: CompileDecision, built: Any) -> dict[str, Any]:
    """The decision as ``run.json`` records it, with the measured compile seconds of a compiled step; where
    the probe timed the eager step, the measured compiled / eager step ratio is also recorded for the next
    decision."""
    clock = getattr(built, "clock", None)
    if decision.compiled and clock is not None:
        decision.compile_seconds = clock.seconds
        if clock.step_seconds is not None and decision.eager_step_seconds and clock.key is not None:
            decision.measured_step_ratio = clock.step_seconds / decision.eager_step_seconds
            remember_ratio(clock.key, decision.measured_step_ratio)
    return decision.as_dict()


def parameter_tensors(*modules: nn.Module | None) -> int:
    """Parameter tensors of the given modules (None skipped): the size the cold estimate scales with."""
    return sum(sum(1 for _ in m.parameters()) for m in modules if m is not None)
