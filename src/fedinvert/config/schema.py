"""The run configuration: one nested mapping resolved from defaults, presets and dotted overrides.

Groups (`attack`, `model`, `dataset`, `prior`, `protocol`) carry a ``name`` and the keyword arguments of the
class that name resolves to; ``attack=gifd`` is shorthand for ``attack.name=gifd``. ``defense`` is an ordered
list of defences whose parameters live at ``defense.<name>.<param>``. Merging uses deepmerge: mappings merge key
by key, anything else (a list, a number, a mapping over a list) is replaced by the later layer.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from deepmerge import Merger

from fedinvert.config.validation import (
    MAX_ARGUMENT_CHARS,
    MAX_CONFIG_BYTES,
    check_plain,
    show,
    validate_config,
)
from fedinvert.errors import ConfigError

GROUPS = ("attack", "model", "dataset", "prior", "protocol")

DEFAULTS: dict[str, Any] = {
    "attack": {"name": "inverting_gradients"},
    "model": {"name": "lenet-dlg"},
    "dataset": {"name": "photos", "indices": None, "batch": None, "split": None, "unique_labels": False, "shared_labels": None, "root": None},
    "prior": None,
    "defense": {},
    "protocol": {"name": "fedsgd", "mode": "eval"},
    "threat": {
        "labels": "inferred", "batch_size": "known", "local_hparams": "known", "defenses": "known", "server": "honest",
    },
    "batch_size": 1,
    "image_size": 32,
    "channels": None,
    "num_classes": None,
    "seed": 0,
    "device": "auto",
    "out": None,
    "overwrite": False,
    "progress": True,
    "observation": None,
    # evaluation (fedinvert.metrics): random public draws of the no-leak reference, distractors of the
    # re-identification rate (99 -> 100 candidates, chance 1 %), optional LPIPS weights, ST-LPIPS on/off
    "metrics": {"reference_draws": 16, "reid_distractors": 99, "lpips_weights": None, "st_lpips": True},
    # what the client does to [0, 1] images before the victim: auto (DESIGN §12 default of the data set),
    # identity (the victim sees [0, 1]) or {mean: [...], std: [...]} with 1 or C entries each
    "normalization": "auto",
}


def preset_names() -> list[str]:
    """Names of the YAML presets shipped in `fedinvert/config/presets`."""
    folder = resources.files("fedinvert.config") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


# libyaml's safe loader where PyYAML has it (same YAML, several times faster); both refuse every tag
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_config_file(path: Path, name: str) -> bytes:
    """The bytes of a config file, refused before parsing when larger than `MAX_CONFIG_BYTES`."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"config file {name}: cannot be read ({reason})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        size = MAX_CONFIG_BYTES // 1024
        raise ConfigError(f"config file {name}: larger than {size} KiB; a configuration is far smaller")
    return raw


def _parse_yaml(raw: bytes, name: str) -> Any:
    """YAML from UTF-8 bytes: tags refused (safe loading), then `check_plain` bounds."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {name}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start});"
            " save it as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {name} is not valid YAML: {_yaml_problem(err)}") from None
    check_plain(data, source=f"config file {name}")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong and where, on one line."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem or str(err).splitlines()[0])


def load_preset(name: str) -> dict[str, Any]:
    """A shipped preset by name (``preset=gifd-face``), or a YAML file by path (UTF-8, at most
    `MAX_CONFIG_BYTES`, no YAML tags)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {name} does not exist")
        raw = _read_config_file(path, name)
    else:
        candidate = resources.files("fedinvert.config") / "presets" / f"{name}.yaml"
        if not candidate.is_file():
            raise ConfigError(f"preset: unknown preset '{name}'; known: {', '.join(preset_names())}")
        raw = candidate.read_bytes()
    data = _parse_yaml(raw, name)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {name} must hold a mapping at its top level, got {show(data)}")
    return data


def _normalise_groups(data: dict[str, Any]) -> dict[str, Any]:
    """Turn shorthands into the canonical shape: group: NAME -> {name: NAME}; defense list -> mapping."""
    out = dict(data)
    for group in GROUPS:
        value = out.get(group)
        if isinstance(value, str):
            out[group] = {"name": value}
        elif value is not None and not isinstance(value, dict):
            raise ConfigError(f"{group}: must be a name or a mapping, got {show(value)}")
    for section in _SECTIONS:
        if out.get(section) is not None and not isinstance(out[section], dict):
            raise ConfigError(f"{section}: must be a mapping ({section}.<key>=...), got {show(out[section])}")
    defense = out.get("defense")
    if isinstance(defense, str):
        defense = [defense]
    if isinstance(defense, list):
        out["defense"] = {str(name): {} for name in defense}
    elif defense is None:
        out["defense"] = {}
    elif not isinstance(defense, dict):
        raise ConfigError(f"defense: must be a name, a list of names or a mapping, got {show(defense)}")
    return out


_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
_SECTIONS = ("threat", "metrics")  # top-level keys that hold a mapping of their own (besides the groups)
# keys whose values are paths: taken as written, not parsed as YAML
_PATH_KEYS = ("out", "observation", "root", "weights", "lpips_weights")


def _parse_overrides(overrides: Sequence[str]) -> list[dict[str, Any]]:
    """``key=value`` strings -> nested mappings, applied in order (values parsed as YAML)."""
    layers = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"argument {item!r} is not key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"argument {show(item)} has an empty key")
        if len(raw) > MAX_ARGUMENT_CHARS:
            raise ConfigError(f"{show(key)[1:-1]}: the value is longer than {MAX_ARGUMENT_CHARS} characters")
        parts = key.split(".")
        if parts[-1] in _PATH_KEYS:
            # a path is a string as written: out=2024-01-01 is a folder name, not a date
            value: Any = None if raw in ("", "null", "~") else raw
        else:
            try:
                value = yaml.load(raw, Loader=_SAFE_LOADER) if raw != "" else None
            except yaml.YAMLError:
                value = raw
            check_plain(value, key)
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; users mean the number
        if parts[0] in GROUPS and len(parts) == 1:
            if isinstance(value, str):
                value = {"name": value}
            elif value is not None and not isinstance(value, dict):
                raise ConfigError(f"{key}: must be a name or a mapping, got {show(value)}")
        if parts[0] in _SECTIONS and len(parts) == 1 and value is not None and not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping ({key}.<key>=...), got {show(value)}")
        if parts[0] == "defense" and len(parts) == 1:
            value = _normalise_groups({"defense": value})["defense"]
            layers.append({"__replace_defense__": value})
            continue
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        layers.append(nested)
    return layers


def resolve_config(overrides: Sequence[str] = (), *, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults, an optional base config (a preset or a run's config.yaml) and overrides.

    ``preset=NAME`` among the overrides is applied first. Returns a plain nested dict, checked against the
    schema (`fedinvert.config.validation.validate_config`): every key, type, range and name. Raises
    ConfigError naming the first key that is wrong.
    """
    overrides = list(overrides)
    presets = [o.split("=", 1)[1] for o in overrides if o.startswith("preset=")]
    overrides = [o for o in overrides if not o.startswith("preset=")]
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    layers: list[dict[str, Any]] = []
    if base is not None:
        check_plain(base, source="the base configuration")
        layers.append(_normalise_groups(base))
    layers.extend(_normalise_groups(load_preset(p)) for p in presets)
    layers.extend(_parse_overrides(overrides))
    # the layers merge at the end, in one pass; only replacing the defences merges what came before first
    pending: list[dict[str, Any]] = []
    # each group's class name as merging would leave it so far; absent while the group is not a mapping yet
    names = {group: merged[group].get("name") for group in GROUPS if isinstance(merged.get(group), dict)}
    for layer in layers:
        if "__replace_defense__" in layer:
            merged = _merge(merged, pending)
            pending = []
            merged["defense"] = layer["__replace_defense__"]
            continue
        unknown = sorted(set(layer) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown config key; known: {', '.join(sorted(DEFAULTS))}")
        for group in GROUPS:
            new = layer.get(group)
            if not isinstance(new, dict):
                continue
            if "name" not in new:
                names.setdefault(group, None)
                continue
            if group in names and new["name"] != names[group]:
                # naming another class for a group drops the previous class's keywords, set so far by the
                # defaults or by earlier layers
                defaults = DEFAULTS.get(group)
                merged[group] = {k: v for k, v in defaults.items() if k != "name"} if isinstance(defaults, dict) else {}
                pending = [{k: v for k, v in p.items() if k != group} for p in pending]
            names[group] = new["name"]
        pending.append(layer)
    return validate_config(_merge(merged, pending))


# mappings merge key by key; lists, scalars and a value of another type replace what was there
_MERGER = Merger([(dict, ["merge"])], ["override"], ["override"])


def _merge(merged: dict[str, Any], layers: list[dict[str, Any]]) -> dict[str, Any]:
    """``merged`` with ``layers`` merged over it in order, as a new plain dict (the inputs are left as they were)."""
    out = copy.deepcopy(merged)
    for layer in layers:
        out = _MERGER.merge(out, copy.deepcopy(layer))
    return out


def class_keywords(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """Keyword parameters of a class (walking its MRO through ``**kwargs``) or function."""
    params: dict[str, inspect.Parameter] = {}
    if inspect.isclass(factory):
        targets = [c.__init__ for c in inspect.getmro(factory) if "__init__" in vars(c)]  # type: ignore[misc]
    else:
        targets = [factory]
    for fn in targets:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        has_var_kw = False
        for name, p in sig.parameters.items():
            if name == "self" or p.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                has_var_kw = True
                continue
            params.setdefault(name, p)
        if not has_var_kw:
            break
    return params


def resolve_keywords(
    group: str,
    name: str,
    factory: Callable[..., Any],
    given: dict[str, Any],
    *,
    preset: dict[str, Any] | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """The full keyword set for ``factory``: its defaults, then the registry preset, then the user's values.

    Unknown keys raise ConfigError naming the key and the valid ones; a bool where a number is expected (or
    the reverse) is rejected too. Required keywords in ``exclude`` (filled in by the runner) are skipped.
    """
    params = class_keywords(factory)
    valid = sorted(n for n in params if n not in exclude)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key {group}.{unknown[0]} for {group} '{name}'; valid keys: {', '.join(valid)}")
    resolved: dict[str, Any] = {}
    for key in valid:
        p = params[key]
        if key in given:
            value = given[key]
        elif preset and key in preset:
            value = preset[key]
        elif p.default is not inspect.Parameter.empty:
            value = p.default
        else:
            continue
        default = p.default if p.default is not inspect.Parameter.empty else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{group}.{key} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{group}.{key} must be a number, got {value!r}")
            if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{group}.{key} must be an integer, got {value!r}")
            value = type(default)(value)
        resolved[key] = value
    return resolved
