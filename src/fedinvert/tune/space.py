"""Search spaces of `fedinvert tune`: which attack keywords are searched, over which ranges.

Each attack with a default space searches the hyper-parameters its results are known to depend on:

- ``inverting_gradients``: ``lr`` log-uniform in [1e-3, 1], ``schedule`` in {cosine, step, constant}, ``tv``
  log-uniform in [1e-6, 0.1], ``restarts`` in 1..4;
- ``gifd``: ``lr`` log-uniform in [0.01, 1], ``feature_lr_scale`` log-uniform in [0.1, 3], ``radii_scale``
  log-uniform in [0.25, 4] (a factor on every feature stage's ℓ1 radius, `RADII_SCALE`), ``restarts`` in 1..4;
  ``gifd-z`` searches ``lr`` and ``restarts``, ``gifd-e`` and ``gifd-f`` (no balls) ``lr``,
  ``feature_lr_scale`` and ``restarts``.

A user changes a key's range, adds a key or removes one with ``--space`` (repeatable), as ``KEY=SPEC`` or a
YAML file mapping keys to specs::

    attack.lr=1e-3:1          # a number range: log-uniform (both ends > 0), ``:linear`` for uniform
    attack.restarts=1:8       # whole numbers where the keyword is one
    attack.schedule=cosine,step
    attack.signed=true,false
    attack.tv=none            # not searched: the configuration's value stays

Keys that define the objective itself (the distance, its pruning mask, the FedAvg simulation, the adaptive
replay, a held-out share) or the budget (iterations, steps) cannot be searched: trials would no longer be
comparable, or the search would only find that more steps match better.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from fedinvert.config.validation import show
from fedinvert.errors import ConfigError

#: The pseudo-key that scales the attack's resolved ``radii`` (every feature stage's ℓ1 ball) by one factor.
RADII_SCALE = "attack.radii_scale"

#: Keywords that define the distance every trial is scored by: searching them would compare different objectives.
OBJECTIVE_KEYS = frozenset({"distance", "prune_ratio", "fedavg", "adaptive", "holdout", "holdout_seed"})
#: Keywords that set the budget: part of the scenario (a longer run trivially matches better).
BUDGET_KEYS = frozenset({
    "iterations", "steps_per_stage", "coarse_steps", "latent_steps", "finetune_steps", "max_eval",
    "remapper_samples", "remapper_epochs",
})
#: Keywords that change how a run executes, not what it finds.
EXECUTION_KEYS = frozenset({"device", "compile", "log_every", "prior"})


@dataclass(frozen=True)
class Param:
    """One searched key: a number range (``float`` or ``int``, optionally log-uniform) or a set of choices."""

    key: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws (or the value an enqueued trial fixes)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)  # type: ignore[arg-type]

    def values(self) -> list[Any]:
        """Values to check the configuration with before any work: both ends, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def describe(self) -> str:
        """``attack.lr 0.001..1 (log)``, ``attack.schedule {cosine, step}``."""
        if self.kind == "categorical":
            return f"{self.key} {{{', '.join(c if isinstance(c, str) else json.dumps(c) for c in self.choices)}}}"
        scale = " (log)" if self.log else ""
        return f"{self.key} {_number(self.low)}..{_number(self.high)}{scale}"

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"key": self.key, "kind": self.kind, "choices": list(self.choices)}
        return {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high, "log": self.log}


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _log(key: str, low: float, high: float) -> Param:
    return Param(key, "float", low, high, log=True)


_IG = [
    _log("attack.lr", 1e-3, 1.0),
    Param("attack.schedule", "categorical", choices=("cosine", "step", "constant")),
    _log("attack.tv", 1e-6, 0.1),
    Param("attack.restarts", "int", 1, 4),
]
_GIFD_LR = _log("attack.lr", 0.01, 1.0)
_GIFD_FEATURE = _log("attack.feature_lr_scale", 0.1, 3.0)
_RESTARTS = Param("attack.restarts", "int", 1, 4)

#: The default search space per registered attack name.
DEFAULT_SPACES: dict[str, list[Param]] = {
    "inverting_gradients": _IG,
    "gifd": [_GIFD_LR, _GIFD_FEATURE, _log(RADII_SCALE, 0.25, 4.0), _RESTARTS],
    "gifd-z": [_GIFD_LR, _RESTARTS],
    "gifd-e": [_GIFD_LR, _GIFD_FEATURE, _RESTARTS],
    "gifd-f": [_GIFD_LR, _GIFD_FEATURE, _RESTARTS],
}


@dataclass(frozen=True)
class SearchSpace:
    """The searched keys in order, and trial 0's values: the configuration's own (``defaults``)."""

    params: tuple[Param, ...]
    defaults: dict[str, Any]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.key: p.suggest(trial) for p in self.params}

    def as_list(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.params]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar(text: str) -> Any:
    """A choice as YAML reads it (``true`` a boolean, ``0.1`` a number), a bare word as itself."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def _endpoint(key: str, text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--space {key}={spec}: {text!r} is not a number (a range is LOW:HIGH)") from None
    if not math.isfinite(value):
        raise ConfigError(f"--space {key}={spec}: the range ends must be finite numbers")
    return value


def parse_spec(key: str, spec: Any, default: Any) -> Param | None:
    """One ``--space`` entry as a `Param`, or None for ``none`` (the key is not searched).

    ``spec`` is ``LOW:HIGH[:log|:linear]``, ``A,B,...`` or ``none`` (a string), or a YAML list of choices.
    ``default`` is the configuration's value of the key: an integer makes a range one of whole numbers.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("none", "off", "")):
        return None
    if isinstance(spec, list):
        choices = tuple(spec)
    elif isinstance(spec, str) and ":" in spec:
        parts = [p.strip() for p in spec.split(":")]
        scale = None
        if len(parts) == 3:
            scale = parts.pop().lower()
            if scale not in ("log", "linear"):
                raise ConfigError(f"--space {key}={spec}: the third part must be log or linear, got {scale!r}")
        if len(parts) != 2:
            raise ConfigError(f"--space {key}={spec}: a range is LOW:HIGH (optionally :log or :linear)")
        low, high = (_endpoint(key, p, spec) for p in parts)
        if not low < high:
            raise ConfigError(f"--space {key}={spec}: LOW must be below HIGH")
        log = scale != "linear"
        if log and low <= 0:
            if scale == "log":
                raise ConfigError(f"--space {key}={spec}: a log-uniform range needs LOW > 0 (or :linear)")
            log = False
        if _is_int(default):
            if not (low.is_integer() and high.is_integer()):
                raise ConfigError(f"--space {key}={spec}: {key} is a whole number; give whole-number ends")
            return Param(key, "int", int(low), int(high), log=log and scale == "log")
        if default is not None and not _is_number(default):
            raise ConfigError(f"--space {key}={spec}: {key} is {show(default)}, not a number; give choices A,B,...")
        return Param(key, "float", low, high, log=log)
    elif isinstance(spec, str):
        choices = tuple(_scalar(c.strip()) for c in spec.split(",") if c.strip())
    else:
        raise ConfigError(f"--space {key}: give LOW:HIGH, A,B,... or none, got {show(spec)}")
    if len(choices) < 2:
        raise ConfigError(f"--space {key}={show(spec)}: give two choices or more (a fixed value is {key}=VALUE)")
    if any(not isinstance(c, (str, int, float, bool)) or c is None for c in choices):
        raise ConfigError(f"--space {key}: choices must be plain values, got {show(list(choices))}")
    return Param(key, "categorical", choices=choices)


def read_space_args(entries: Sequence[str]) -> list[tuple[str, Any]]:
    """``--space`` arguments (``KEY=SPEC`` or a YAML file of ``key: spec``) as (key, spec) in order."""
    from fedinvert.config.schema import load_preset

    found: list[tuple[str, Any]] = []
    for entry in entries:
        key, sep, spec = entry.partition("=")
        if sep:
            found.append((key.strip(), spec.strip()))
            continue
        if not entry.endswith((".yaml", ".yml")):
            raise ConfigError(f"--space {entry!r}: give KEY=LOW:HIGH, KEY=A,B,..., KEY=none or a .yaml file")
        data = load_preset(entry)  # the config files' checks: exists, size, UTF-8, safe YAML, a mapping
        for key, spec in data.items():
            if not isinstance(key, str):
                raise ConfigError(f"--space {entry}: keys must be dotted config keys, got {show(key)}")
            found.append((key, spec))
    return found


def build_space(attack: str, keywords: Mapping[str, Any], entries: Sequence[str], *,
                valid: Sequence[str]) -> SearchSpace:
    """The attack's default space (`DEFAULT_SPACES`) with the user's ``--space`` entries applied key by key.

    Args:
        attack: the registered attack name.
        keywords: the attack's fully resolved keyword arguments (its defaults, the preset's, the user's): the
            values of trial 0.
        entries: the ``--space`` arguments.
        valid: the attack's keyword names.

    Raises:
        ConfigError: a key that is not one of the attack's, one that cannot be searched, a malformed range, a
            key without a value to start from, or an empty space.
    """
    params: dict[str, Param] = {p.key: p for p in DEFAULT_SPACES.get(attack, [])}
    for key, spec in read_space_args(entries):
        check_key(key, attack, valid, radii="radii" in keywords)
        parsed = parse_spec(key, spec, _default_of(key, keywords))
        if parsed is None:
            params.pop(key, None)
        else:
            params[key] = parsed
    if not params:
        known = ", ".join(DEFAULT_SPACES)
        raise ConfigError(f"attack '{attack}' has no default search space (those: {known}); give keys with"
                          " --space attack.KEY=LOW:HIGH")
    defaults: dict[str, Any] = {}
    final: list[Param] = []
    for param in params.values():
        value = _default_of(param.key, keywords)
        if value is None:
            raise ConfigError(f"{param.key}: the configuration has no value of it to start from (trial 0 runs the"
                              f" configuration as given); set {param.key}=VALUE too, or leave it out of --space")
        if param.kind == "categorical" and value not in param.choices:
            param = Param(param.key, "categorical", choices=(*param.choices, value))  # trial 0 is the configuration
        elif param.kind != "categorical" and not _is_number(value):
            raise ConfigError(f"{param.key}: the configuration's value {show(value)} is not a number; give choices")
        if param.kind == "int" and not _is_int(value):
            raise ConfigError(f"{param.key}: the configuration's value {show(value)} is not a whole number")
        defaults[param.key] = value
        final.append(param)
    return SearchSpace(tuple(final), defaults)


def _default_of(key: str, keywords: Mapping[str, Any]) -> Any:
    if key == RADII_SCALE:
        return 1.0
    return keywords.get(key.split(".", 1)[1])


def check_key(key: str, attack: str, valid: Sequence[str], *, radii: bool) -> None:
    """Refuse a ``--space`` key that is not a searchable keyword of ``attack`` (see the module docstring)."""
    if not key.startswith("attack.") or key.count(".") != 1:
        raise ConfigError(f"--space {key}: only the attack's keywords are searched (attack.KEY)")
    name = key.split(".", 1)[1]
    if key == RADII_SCALE:
        if radii:
            return
        raise ConfigError(f"--space {key}: attack '{attack}' has no ℓ1 radii to scale")
    if name not in valid:
        raise ConfigError(f"--space {key}: unknown key for attack '{attack}'; valid keys: {', '.join(sorted(valid))}")
    if name in OBJECTIVE_KEYS:
        raise ConfigError(f"--space {key}: it defines the objective (the gradient distance every trial is scored"
                          " by); set it as key=value for every trial")
    if name in BUDGET_KEYS:
        raise ConfigError(f"--space {key}: it sets the budget, part of the scenario (more steps always match"
                          " better); set it as key=value")
    if name in EXECUTION_KEYS:
        raise ConfigError(f"--space {key}: it changes how a run executes, not what it finds; set it as key=value")
