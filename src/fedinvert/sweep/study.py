"""A study file: a base configuration and axes to cross, expanded into runs with stable ids.

```yaml
name: theorem1                      # optional; the folder name by default
description: OP-GIA error against batch size
base:                               # a configuration mapping as in a YAML config, or `preset: NAME` inside it
  attack: {name: inverting_gradients, steps: 300}
  model: lenet-dlg
axes:                               # dotted key -> list of values, crossed (the last varies fastest)
  batch_size: [1, 2, 4]
  seed: [0, 1, 2, 3, 4, 5, 6, 7]
zip:                                # optional: groups of axes varied together (equal lengths), crossed with the rest
  - {attack.name: [inverting_gradients, gifd], prior: [null, dcgan-face]}
  - {preset: [id-fashion, ood-face-lfw]}  # an axis may name presets (applied first, then base and axes)
  - {attack.name: [inverting_gradients, gifd],     # a mapping value applies all its leaves together:
     attack: [{iterations: 1000}, {steps_per_stage: 100, restarts: 2}]}  # each attack with its own budget
replicates: [seed]                  # axes that index private batches: a cell pools over them (default [seed])
compare:                            # paired differences the report shows: each value against the baseline
  - {axis: attack.name, baseline: inverting_gradients}
full:                               # the paper-scale study (`fedinvert sweep --full`): replaces base keys and axes
                                    # (an axis given as null is dropped), and zip and compare when it gives them
  axes: {batch_size: [1, 2, 4, 8, 16, 32, 64]}
```

A run's id is a hash of its fully resolved configuration (without ``out``, ``overwrite`` and ``progress``), so
the same configuration is one run whatever study or order produced it, and a resumed sweep finds it again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedinvert.config import resolve_config
from fedinvert.config.schema import GROUPS, load_preset
from fedinvert.config.validation import show
from fedinvert.errors import ConfigError, FedinvertError

STUDY_KEYS = ("name", "description", "base", "axes", "zip", "replicates", "compare", "full")
_PATH_KEYS = ("out", "observation", "root", "weights", "lpips_weights", "checkpoint")
_NOT_HASHED = ("out", "overwrite", "progress")
MAX_RUNS = 100_000


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its id, its axis values (dotted key -> value) and its resolved configuration."""

    id: str
    values: dict[str, Any]
    config: dict[str, Any]


@dataclass(frozen=True)
class Study:
    """A parsed study file (see the module docstring)."""

    name: str
    description: str | None
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    zips: list[dict[str, list[Any]]] = field(default_factory=list)
    replicates: list[str] = field(default_factory=list)
    compare: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    @property
    def axis_keys(self) -> list[str]:
        """Every axis, crossed ones first, then the zipped ones, in the order the file gives them."""
        return [*self.axes, *(key for group in self.zips for key in group)]

    def runs(self, overrides: list[str] | tuple[str, ...] = ()) -> list[PlannedRun]:
        """The crossed runs, each configuration resolved and checked (`resolve_config`) before any work.

        ``overrides`` (``key=value``) apply to every run after the base, before its axis values. Two axis
        combinations that resolve to the same configuration are one run. Raises ConfigError naming the run's
        axis values and the first bad key.
        """
        factors: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in self.axes.items()]
        for group in self.zips:
            length = len(next(iter(group.values())))
            factors.append([{key: values[i] for key, values in group.items()} for i in range(length)])
        count = 1
        for factor in factors:
            count *= len(factor)
        if count > MAX_RUNS:
            raise ConfigError(f"study {self.name}: its axes cross to {count} runs, more than {MAX_RUNS}")
        base = base_overrides(self.base)
        planned: dict[str, PlannedRun] = {}
        for combo in itertools.product(*factors):
            values: dict[str, Any] = {}
            for part in combo:
                values.update(part)
            try:
                cfg = resolve_config([*base, *overrides, *(o for k, v in values.items() for o in axis_overrides(k, v))])
            except FedinvertError as err:
                raise ConfigError(f"study {self.name}, run {describe(values)}: {err}") from None
            run_id = config_id(cfg)
            planned.setdefault(run_id, PlannedRun(run_id, values, cfg))
        return list(planned.values())


def describe(values: dict[str, Any]) -> str:
    """``attack.name=gifd batch_size=4`` for a run's axis values."""
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()) or "(no axes)"


def config_id(cfg: dict[str, Any]) -> str:
    """The run's id: 12 hex digits of the SHA-256 of its resolved configuration in canonical JSON."""
    kept = {k: v for k, v in cfg.items() if k not in _NOT_HASHED}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def override(key: str, value: Any) -> str:
    """``key=value`` for `resolve_config`: JSON (valid YAML) for values, a path key's string as written."""
    if isinstance(value, str) and (key.split(".")[-1] in _PATH_KEYS or key.split(".")[-1] == "name"):
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def axis_overrides(key: str, value: Any) -> list[str]:
    """An axis value as ``key=value`` overrides: a preset name as ``preset=NAME``, a mapping as its leaves (a
    group's ``name`` first), anything else as one override."""
    if key == "preset":
        if not isinstance(value, str):
            raise ConfigError(f"axis preset: values must be preset names, got {show(value)}")
        return [f"preset={value}"]
    if isinstance(value, dict) and value and key != "defense":
        out: list[str] = []
        _leaves(key, value, out, where=f"axis {key}")
        return out
    return [override(key, value)]


def _leaves(prefix: str, value: Any, out: list[str], *, where: str) -> None:
    """Append ``prefix.leaf=value`` for every leaf of a mapping (a group's ``name`` before its keywords, so
    naming a class resets the previous one's); ``defense`` and empty mappings are given whole."""
    if isinstance(value, dict) and value and prefix != "defense":
        for key in sorted(value, key=lambda k: k != "name"):
            if not isinstance(key, str):
                raise ConfigError(f"{where}: keys must be strings, got {show(key)}")
            _leaves(f"{prefix}.{key}", value[key], out, where=where)
    else:
        out.append(override(prefix, value))


def base_overrides(base: dict[str, Any]) -> list[str]:
    """A base mapping as ``key=value`` overrides: ``preset`` first, then each leaf (a group's ``name`` before its
    keywords, so naming a class resets the previous one's); ``defense`` and empty mappings are given whole."""
    out: list[str] = []
    presets = base.get("preset")
    for name in [presets] if isinstance(presets, str) else list(presets or []):
        if not isinstance(name, str):
            raise ConfigError(f"base.preset: must be a preset name or a list of them, got {show(name)}")
        out.append(f"preset={name}")

    for key, value in base.items():
        if key == "preset":
            continue
        if not isinstance(key, str):
            raise ConfigError(f"base: keys must be strings, got {show(key)}")
        if key in GROUPS and isinstance(value, str):
            out.append(f"{key}.name={value}")
            continue
        _leaves(key, value, out, where=f"base.{key}")
    return out


def _axis_lists(data: Any, where: str) -> dict[str, list[Any]]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must map dotted keys to lists of values, got {show(data)}")
    out: dict[str, list[Any]] = {}
    for key, values in data.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where}: {show(key)} is not a dotted config key")
        if key in _NOT_HASHED:
            raise ConfigError(f"{where}.{key}: {key} cannot be an axis (the sweep sets it for every run)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key}: must be a non-empty list of values, got {show(values)}")
        out[key] = list(values)
    return out


def parse_study(data: Any, *, source: str, name: str, full: bool = False) -> Study:
    """A study from its parsed YAML (see the module docstring); ``full`` applies its ``full:`` section."""
    if not isinstance(data, dict):
        raise ConfigError(f"study {source} must hold a mapping at its top level, got {show(data)}")
    unknown = sorted(str(k) for k in data if k not in STUDY_KEYS)
    if unknown:
        raise ConfigError(f"study {source}: unknown key {unknown[0]}; known: {', '.join(STUDY_KEYS)}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"study {source}: base must be a configuration mapping, got {show(base)}")
    axes = _axis_lists(data.get("axes"), "axes")
    zips_raw = data.get("zip") or []
    if isinstance(zips_raw, dict):
        zips_raw = [zips_raw]
    if not isinstance(zips_raw, list):
        raise ConfigError(f"study {source}: zip must be a list of mappings, got {show(zips_raw)}")
    zips = [_axis_lists(group, f"zip[{i}]") for i, group in enumerate(zips_raw)]
    if full:
        section = data.get("full")
        if section is None:
            raise ConfigError(f"study {source} has no full: section for --full")
        if not isinstance(section, dict) or set(section) - {"base", "axes", "zip", "compare"}:
            raise ConfigError(f"study {source}: full: may hold base, axes, zip and compare, got {show(section)}")
        full_base = section.get("base") or {}
        if not isinstance(full_base, dict):
            raise ConfigError(f"study {source}: full.base must be a mapping, got {show(full_base)}")
        base = {**base, **full_base}
        full_axes = section.get("axes")
        if isinstance(full_axes, dict):  # an axis given as null is dropped (the full study zips it instead)
            for key in [k for k, v in full_axes.items() if v is None]:
                axes.pop(key, None)
            full_axes = {k: v for k, v in full_axes.items() if v is not None}
        axes.update(_axis_lists(full_axes, "full.axes"))
        if "zip" in section:
            zips = [_axis_lists(group, f"full.zip[{i}]") for i, group in enumerate(section["zip"] or [])]
    zips = [group for group in zips if group]
    seen: set[str] = set(axes)
    for i, group in enumerate(zips):
        lengths = {len(v) for v in group.values()}
        if len(lengths) > 1:
            raise ConfigError(f"zip[{i}]: its lists must have equal lengths, got {sorted(lengths)}")
        clash = sorted(seen & set(group))
        if clash:
            raise ConfigError(f"zip[{i}].{clash[0]}: that key is already an axis")
        seen |= set(group)
    keys = [*axes, *(k for g in zips for k in g)]
    replicates = data.get("replicates")
    if replicates is None:
        replicates = [k for k in ("seed", "dataset.indices") if k in keys]
    if isinstance(replicates, str):
        replicates = [replicates]
    if not isinstance(replicates, list) or any(r not in keys for r in replicates):
        raise ConfigError(f"study {source}: replicates must list axes of the study ({', '.join(keys)}), got {show(replicates)}")
    compare = (data.get("full") or {}).get("compare", data.get("compare")) if full else data.get("compare")
    compare = compare or []
    if isinstance(compare, dict):
        compare = [compare]
    if not isinstance(compare, list):
        raise ConfigError(f"study {source}: compare must be a list of {{axis:, baseline:}}, got {show(compare)}")
    for i, entry in enumerate(compare):
        if not isinstance(entry, dict) or set(entry) != {"axis", "baseline"}:
            raise ConfigError(f"compare[{i}]: must be {{axis: KEY, baseline: VALUE}}, got {show(entry)}")
        axis_values = axes.get(entry["axis"]) or next((g[entry["axis"]] for g in zips if entry["axis"] in g), None)
        if axis_values is None:
            raise ConfigError(f"compare[{i}].axis: {show(entry['axis'])} is not an axis of the study")
        if entry["baseline"] not in axis_values:
            raise ConfigError(f"compare[{i}].baseline: {show(entry['baseline'])} is not a value of {entry['axis']}")
    study_name = data.get("name") or name
    if not isinstance(study_name, str):
        raise ConfigError(f"study {source}: name must be a string, got {show(study_name)}")
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"study {source}: description must be a string, got {show(description)}")
    return Study(name=study_name, description=description, base=base, axes=axes, zips=zips,
                 replicates=list(replicates), compare=list(compare), source=source)


def load_study(path: str | Path, *, full: bool = False) -> Study:
    """Read and check a study file (UTF-8 YAML, the config files' size limit, no tags)."""
    p = Path(path)
    if p.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"study file {path} must be a .yaml or .yml file")
    data = load_preset(str(p))  # the config files' checks: exists, size, UTF-8, safe YAML, a mapping
    return parse_study(data, source=str(path), name=p.stem, full=full)
