"""The typed schema of a resolved run configuration, checked before any work is done.

Every key has a type: the fixed sections (top level, ``threat``, ``dataset``, ``metrics``, ``normalization``)
are declared here; the keywords of the named classes (``attack.*``, ``model.*``, ``prior.*``, ``protocol.*``,
``defense.<name>.*``) are read from the class's ``__init__`` annotations, with the range constraints of
`RANGES` and the registry-backed name choices of `_choices`. Values are checked with pydantic in strict mode
(no ``"abc"`` or ``1.5`` for an integer, no ``"false"`` for a boolean; an integer is accepted for a float and
an integral float such as ``1e3`` for an integer), every float must be finite, and every failure is one
`ConfigError` line: ``"<key>: <what is wrong>, got <value>"``.

Also here: the bounds on what a config file or a ``key=value`` argument may hold before it is parsed or merged
(`check_plain`), so an 8 MB list or an alias bomb is refused at once instead of hanging the merge.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import annotated_types as at
from pydantic import AllowInfNan, BeforeValidator, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import SchemaError

from fedinvert.errors import ConfigError
from fedinvert.models.layers import MIN_IMAGE_SIZE
from fedinvert.observation import Capability

# -- bounds ----------------------------------------------------------------------------------------------
MAX_CONFIG_BYTES = 256 * 1024
"""Largest config file read (bytes); checked before the YAML is parsed."""
MAX_ARGUMENT_CHARS = 64 * 1024
"""Longest ``key=value`` argument (characters); checked before the value is parsed."""
MAX_LIST_ENTRIES = 10_000
"""Most entries of any one list in a configuration (merging long lists is slow)."""
MAX_NODES = 50_000
"""Most values (scalars, lists and mappings) in one config file or argument, aliases counted each time."""
MAX_DEPTH = 32
"""Deepest nesting of lists and mappings."""
MAX_BATCH_SIZE = 10_000
"""Largest ``batch_size`` (per client); the memory check of the run itself comes later."""
MAX_IMAGE_SIZE = 4096
"""Largest image side in pixels; the memory check of the run itself comes later."""
MAX_CLASSES = 100_000
"""Largest label space (``num_classes``, entries of ``dataset.label_map``)."""
MAX_SEED = 2**32 - 1
"""Seeds are 32-bit (`fedinvert.seeding`): a larger one would alias a smaller one."""

_STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)
_NONE = type(None)


def _integral_float(value: Any) -> Any:
    """``1e3`` (YAML's float) for an integer key: accepted when it is a whole number."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _not_bool(value: Any) -> Any:
    """A boolean for an integer choice is refused (``True == 1`` would pass a ``Literal[1, 3]``)."""
    return repr(value) if isinstance(value, bool) else value


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _annotated(base: Any, *metadata: Any) -> Any:
    """``Annotated[base, *metadata]`` built at run time."""
    params = (base, *metadata)
    return _ANNOTATED[params]


_ANNOTATED: Any = Annotated


def config_type(
    annotation: Any, constraints: tuple[Any, ...] = (), choices: tuple[str, ...] | None = None
) -> Any:
    """The type a configuration value is checked against, made from a keyword's annotation.

    ``int`` also takes integral floats; every ``float`` must be finite (unless the annotation says
    ``AllowInfNan(True)``); a ``tuple`` also takes a YAML list; ``constraints`` (annotated-types bounds
    such as ``Ge(0)``) apply to every number in the annotation, ``choices`` replace ``str`` by a ``Literal``.
    """
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *meta = args
        if any(isinstance(m, AllowInfNan) for m in meta):
            return annotation
        return _annotated(config_type(inner, constraints, choices), *meta)
    if origin in (Union, types.UnionType):
        return Union[tuple(config_type(a, constraints, choices) for a in args)]  # noqa: UP007
    if origin is Literal and any(isinstance(a, int) and not isinstance(a, bool) for a in args):
        return Annotated[annotation, BeforeValidator(_not_bool)]
    if origin is list:
        return list[config_type(args[0], constraints, choices)] if args else list  # type: ignore[misc]
    if origin is tuple:
        items = tuple(config_type(a, constraints, choices) if a is not Ellipsis else a for a in args)
        fixed = tuple[items] if items else tuple  # type: ignore[valid-type]
        return _annotated(fixed, BeforeValidator(_list_to_tuple))
    if annotation is int:
        return _annotated(int, BeforeValidator(_integral_float), *constraints)
    if annotation is float:
        return _annotated(float, AllowInfNan(False), *constraints)
    if annotation is str and choices is not None:
        return Literal[choices]
    return annotation


@functools.lru_cache(maxsize=1024)
def _cached_adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation, config=_STRICT)


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    """The strict validator of ``annotation``; one that accepts anything where pydantic has no schema for it
    (a class keyword annotated with a protocol, say: the class checks such values itself)."""
    try:
        return _cached_adapter(annotation)
    except (
        TypeError,
        SchemaError,
    ):  # unhashable, or no schema (PydanticSchemaGenerationError is a TypeError)
        try:
            return TypeAdapter(annotation, config=_STRICT)
        except (TypeError, SchemaError):
            return _cached_adapter(Any)


def describe(annotation: Any) -> str:
    """What a value of ``annotation`` looks like, in words (``"an integer ≥ 1 or null"``)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        bounds = _bound_text(args[1:])
        return f"{describe(args[0])} {bounds}" if bounds else describe(args[0])
    if origin in (Union, types.UnionType):
        parts = [describe(a) for a in args if a is not _NONE]
        text = " or ".join(dict.fromkeys(parts))
        return f"{text} or null" if _NONE in args else text
    if origin is Literal:
        return _yaml_text(args[0]) if len(args) == 1 else "one of " + ", ".join(_yaml_text(a) for a in args)
    if origin is list:
        return f"a list (each entry {describe(args[0])})" if args else "a list"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list (each entry {describe(args[0])})"
        return f"a list of {len(args)} entries ({', '.join(describe(a) for a in args)})" if args else "a list"
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        return "a mapping"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        _NONE: "null",
        Path: "a path",
        os.PathLike: "a path",
        Any: "anything",
    }
    if annotation in names:
        return names[annotation]
    if origin is os.PathLike:
        return "a path"
    return f"a {getattr(annotation, '__name__', str(annotation))}"


def _bound_text(metadata: tuple[Any, ...]) -> str:
    """``"≥ 1"``, ``"< 1"`` or ``"in [0, 1)"`` from annotated-types bounds."""
    low = next(((f"[{m.ge}", f"≥ {m.ge}") for m in metadata if isinstance(m, at.Ge)), None)
    low = low or next(((f"({m.gt}", f"> {m.gt}") for m in metadata if isinstance(m, at.Gt)), None)
    high = next(((f"{m.le}]", f"≤ {m.le}") for m in metadata if isinstance(m, at.Le)), None)
    high = high or next(((f"{m.lt})", f"< {m.lt}") for m in metadata if isinstance(m, at.Lt)), None)
    if low and high:
        return f"in {low[0]}, {high[0]}"
    return (low or high or ("", ""))[1]


def _yaml_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number_text(value: Any) -> Any:
    """``0`` for a bound pydantic has turned into ``0.0``."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CONSTRAINT_TEXT = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be ≥ {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be ≤ {le}",
    "finite_number": "must be a finite number",
    "too_long": "must hold at most {max_length} entries",
    "too_short": "must hold at least {min_length} entries",
}


def check_value(key: str, annotation: Any, value: Any) -> Any:
    """``value`` checked against ``annotation`` (strict; see `config_type` for the leniencies it adds).

    Returns the value as the annotation has it (``1e3`` → ``1000`` for an integer, ``1`` → ``1.0`` for a
    float). Raises ConfigError ``"<key>: must be <what>, got <value>"``; a bound or finiteness failure inside
    a list names the entry (``attack.radii[2]: must be ≥ 0, got -1.0``).
    """
    try:
        return _adapter(annotation).validate_python(value)
    except ValidationError as err:
        errors = err.errors(include_url=False)
    for error in errors:
        template = _CONSTRAINT_TEXT.get(error["type"])
        if template is None and error["type"] != "value_error":
            continue
        where = key + "".join(f"[{part}]" for part in error["loc"] if isinstance(part, int))
        context = {k: _number_text(v) for k, v in (error.get("ctx") or {}).items()}
        what = str(context.get("error", "")) if template is None else template.format(**context)
        raise ConfigError(f"{where}: {what}, got {show(error['input'])}")
    raise ConfigError(f"{key}: must be {describe(annotation)}, got {show(value)}")


def check_mapping(
    prefix: str,
    spec: Mapping[str, Any],
    values: Any,
    *,
    defaults: Mapping[str, Any] | None = None,
    what: str = "",
) -> dict[str, Any]:
    """Every key of the mapping ``values`` checked against ``spec`` (key → annotation); keys missing from
    ``values`` are taken from ``defaults`` unchecked (or left out). Unknown keys and a value that is not a
    mapping raise ConfigError naming ``prefix.key``."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix}: must be a mapping{what}, got {show(values)}")
    for key in values:
        if key not in spec:
            raise ConfigError(
                f"{prefix}.{key}: unknown key{what}; valid keys: {', '.join(sorted(spec)) or 'none'}"
            )
    checked = dict(defaults or {})
    checked.update({key: check_value(f"{prefix}.{key}", spec[key], value) for key, value in values.items()})
    return checked


# -- the fixed sections ----------------------------------------------------------------------------------
def _count(low: int = 1, high: int | None = None) -> Any:
    """An integer in [low, high] (or ≥ low)."""
    return config_type(int, (at.Ge(low),) if high is None else (at.Ge(low), at.Le(high)))


def _list_of(entry: Any, most: int, least: int = 0) -> Any:
    """A list of ``entry`` values with ``least`` to ``most`` entries."""
    return _annotated(list[entry], at.MinLen(least), at.MaxLen(most))  # type: ignore[valid-type]


def _optional(annotation: Any) -> Any:
    return Union[annotation, None]  # noqa: UP007  (a runtime type object, not an annotation)


_PATH = _optional(str)  # paths are strings in a config; a Path object is turned into one first

TOP_LEVEL: dict[str, Any] = {
    "batch_size": _count(1, MAX_BATCH_SIZE),
    "image_size": _optional(_count(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)),
    "channels": _optional(config_type(Literal[1, 3])),
    "num_classes": _optional(_count(2, MAX_CLASSES)),
    "seed": _count(0, MAX_SEED),
    "device": str,
    "out": _PATH,
    "overwrite": bool,
    "progress": bool,
    "observation": _PATH,
}
"""The top-level scalar keys. The sections (``threat``, ``dataset``, ``metrics``, ``normalization`` and the
class groups) are checked on their own."""

THREAT: dict[str, Any] = {
    "labels": Literal["inferred", "known"],
    "batch_size": Literal["known", "unknown"],
    "local_hparams": Literal["known", "guessed", "unknown"],
    "defenses": Literal["known", "unknown"],
    "server": Literal["honest", "malicious"],
}

DATASET: dict[str, Any] = {
    "name": str,
    "indices": _optional(Union[_list_of(_count(0), MAX_LIST_ENTRIES), _count(0)]),  # noqa: UP007
    "batch": _optional(_count(0, 1_000_000)),
    "split": _optional(str),
    "unique_labels": bool,
    "shared_labels": _optional(_count(0, MAX_LIST_ENTRIES)),
    "root": _PATH,
    "label_map": _optional(_list_of(_count(0, MAX_CLASSES - 1), MAX_CLASSES)),
}

METRICS: dict[str, Any] = {
    "reference_draws": _count(1, 100_000),
    "reid_distractors": _count(1, 1_000_000),
    "lpips_weights": _PATH,
    "st_lpips": bool,
}

MAX_PRETRAIN_EPOCHS = 10_000
"""Most epochs of ``model.pretrain_epochs``."""

VICTIM_TRAINING: dict[str, Any] = {
    "pretrain_epochs": _count(0, MAX_PRETRAIN_EPOCHS),
    "pretrain_images": _optional(_count(1)),
    "checkpoint": _PATH,
}
"""The ``model`` keys that give the victim its weights (`fedinvert.pretrain`), not keywords of the model class:
train it for ``pretrain_epochs`` epochs (default 0) on the data set's train split, on a seeded sample of
``pretrain_images`` of its images (default all; ignored at 0 epochs), after loading the safetensors state dict
``checkpoint`` (default none)."""

NORMALIZATION: dict[str, Any] = {
    "mean": _list_of(config_type(float), 3, 1),
    "std": _list_of(config_type(float, (at.Gt(0),)), 3, 1),
}

# -- class keywords --------------------------------------------------------------------------------------
_RATE = (at.Gt(0),)
_WEIGHT = (at.Ge(0),)
_FRACTION = (at.Ge(0), at.Lt(1))
_COUNT = (at.Ge(1),)
_SEED = (at.Ge(0), at.Le(MAX_SEED))

RANGES: dict[str, dict[str, tuple[Any, ...]]] = {
    "attack": {
        **dict.fromkeys(
            (
                "iterations",
                "restarts",
                "steps_per_stage",
                "latent_steps",
                "coarse_steps",
                "remapper_samples",
                "remapper_epochs",
                "group_every",
                "max_eval",
                "log_every",
            ),
            _COUNT,
        ),
        "finetune_steps": (at.Ge(0),),
        "group_start": (at.Ge(0),),
        "population": (at.Ge(2),),
        **dict.fromkeys(("lr", "finetune_lr", "sigma", "feature_lr_scale"), _RATE),
        **dict.fromkeys(
            ("tv", "image_norm", "kld", "bn", "bn_first", "group", "radii", "latent_radii"), _WEIGHT
        ),
        "prune_ratio": _FRACTION,
    },
    "protocol": {
        "local_epochs": _COUNT,
        "local_batch_size": _COUNT,
        "lr": _RATE,
        "momentum": _FRACTION,
        "shuffle_seed": _SEED,
    },
    "model": {"width": _RATE, "blocks": _COUNT},
    "prior": {
        **dict.fromkeys(
            (
                "resolution",
                "channel_width",
                "z_dim",
                "num_classes",
                "n_stats",
                "size",
                "style_dim",
                "n_mlp",
                "channel_multiplier",
                "max_channels",
                "noise_blocks",
            ),
            _COUNT,
        ),
        "truncation": _RATE,
        "eps": _RATE,
        "init_seed": _SEED,
    },
    "defense.clipping": {"bound": _RATE},
    "defense.dp_sgd": {"max_grad_norm": _RATE, "noise_multiplier": _WEIGHT, "delta": (at.Gt(0), at.Lt(1))},
    "defense.gaussian_noise": {"std": _WEIGHT},
    "defense.laplace_noise": {"scale": _WEIGHT},
    "defense.pruning": {"prune_ratio": _FRACTION},
    "defense.quantization": {"bits": (at.Ge(2), at.Le(32))},
    "defense.secure_aggregation": {"clients": (at.Ge(1), at.Le(1024))},
    "defense.soteria": {"prune_ratio": _FRACTION, "chunk": _COUNT},
}
"""Range constraints of class keywords beyond their annotations, per group: weights and ratios ≥ 0,
learning rates and scales > 0, counts ≥ 1, seeds 32-bit. The classes check the same ranges again."""


def _choices(group: str) -> dict[str, tuple[str, ...]]:
    """Keyword names whose ``str`` values are names from a registry or a module constant."""
    if group != "attack":
        return {}
    from fedinvert.attacks import DISTANCES, LABEL_METHODS
    from fedinvert.attacks.base import SCHEDULES
    from fedinvert.attacks.objectives import FEDAVG_MODES

    return {
        "distance": tuple(DISTANCES.names()),
        "labels": ("auto", "known", *LABEL_METHODS.names()),
        "schedule": tuple(SCHEDULES),
        "fedavg": tuple(FEDAVG_MODES),
        "compile": ("auto",),  # with true and false (booleans)
    }


def keyword_annotations(factory: Callable[..., Any]) -> dict[str, Any]:
    """The ``__init__`` annotations of a class (its MRO's, the most derived winning) or of a function."""
    if inspect.isclass(factory):
        classes = [c for c in reversed(inspect.getmro(factory)) if "__init__" in vars(c)]
        targets = [c.__init__ for c in classes]  # type: ignore[misc]
    else:
        targets = [factory]
    hints: dict[str, Any] = {}
    for fn in targets:
        try:
            hints.update(typing.get_type_hints(fn, include_extras=True))
        except (NameError, TypeError):  # an annotation that cannot be resolved: that function's keys take Any
            continue
    hints.pop("return", None)
    return hints


def keyword_schema(
    group: str, factory: Callable[..., Any], keys: list[str], *, table: str | None = None
) -> dict[str, Any]:
    """key → the type a configured value of that keyword of ``factory`` is checked against."""
    from fedinvert.config.schema import class_keywords

    hints = keyword_annotations(factory)
    params = class_keywords(factory)
    ranges = RANGES.get(table or group, {})
    choices = _choices(group)
    schema = {}
    for key in keys:
        annotation = hints.get(key, Any)
        if annotation is Any and key in params and params[key].default is not inspect.Parameter.empty:
            default = params[key].default
            annotation = type(default) if isinstance(default, (bool, int, float, str)) else Any
        schema[key] = config_type(annotation, ranges.get(key, ()), choices.get(key))
    return schema


def _group_section(cfg: Mapping[str, Any], group: str, *, optional: bool = False) -> dict[str, Any] | None:
    """The ``group`` section as a mapping with a string ``name``; ConfigError for any other shape."""
    section = cfg.get(group)
    if section is None and optional:
        return None
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{group}: must be a name or a mapping with a name, got {show(section)}")
    if "name" not in section:
        raise ConfigError(f"{group}.name: missing; set {group}=<name>")
    check_value(f"{group}.name", str, section["name"])
    return dict(section)


def _registered(registry: Any, key: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name``; else the registry's ConfigError (known names, a close match)."""
    try:
        return registry.get(name)
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None


def _check_keywords(
    group: str,
    name: str,
    factory: Callable[..., Any],
    section: dict[str, Any],
    valid: list[str],
    *,
    table: str | None = None,
) -> dict[str, Any]:
    given = {k: v for k, v in section.items() if k != "name"}
    unknown = sorted(str(k) for k in set(given) - set(valid))
    if unknown:
        raise ConfigError(
            f"{group}.{unknown[0]}: unknown key for {group.split('.')[0]} '{name}'; "
            + (f"valid keys: {', '.join(sorted(valid))}" if valid else "it takes no keys")
        )
    schema = keyword_schema(group.split(".")[0], factory, list(given), table=table)
    checked = {key: check_value(f"{group}.{key}", schema[key], value) for key, value in given.items()}
    return {"name": name, **checked} if "name" in section else checked


# -- the whole configuration -----------------------------------------------------------------------------
def _check_device(value: str) -> None:
    if value == "auto":
        return
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"device: must be auto, cpu, cuda, cuda:N or another torch device, got {show(value)}"
        ) from None


def _check_normalization(value: Any, channels: int | None) -> Any:
    if isinstance(value, str) and value in ("auto", "identity"):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            "normalization: must be auto, identity or a mapping {mean: [...], std: [...]},"
            f" got {show(value)}"
        )
    checked = check_mapping("normalization", NORMALIZATION, value)
    for key in NORMALIZATION:
        if key not in checked:
            raise ConfigError(
                f"normalization.{key}: missing; give mean and std, one entry or one per channel"
            )
        allowed = sorted({1, channels} if channels else {1, 3})
        if len(checked[key]) not in allowed:
            counts = "1 entry" if allowed == [1] else f"{' or '.join(map(str, allowed))} entries"
            raise ConfigError(
                f"normalization.{key}: must hold {counts} (one for all channels, or one per channel),"
                f" got {show(checked[key])}"
            )
    return checked


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check a resolved configuration against the schema, before any work; returns a checked plain copy.

    Keys missing from ``cfg`` take their defaults (`fedinvert.config.DEFAULTS`). Paths become strings,
    integral floats integers (for integer keys) and integers floats (for float keys). The names of the
    attack, model, data set, prior, protocol and defences must be registered, and their keywords fit the
    classes' annotations and `RANGES`; a saved ``observation`` must exist, and the keys it fixes must not be
    set.

    Raises:
        ConfigError: the first key that is wrong, as ``"<key>: <what is wrong>, got <value>"``.
    """
    from fedinvert.attacks import ATTACKS
    from fedinvert.config.schema import DEFAULTS, class_keywords
    from fedinvert.data.base import DATASETS
    from fedinvert.defenses import DEFENSES
    from fedinvert.models.base import MODELS, model_options
    from fedinvert.priors import PRIORS
    from fedinvert.runner import PROTOCOLS, observation_conflicts

    if not isinstance(cfg, Mapping):
        raise ConfigError(f"the configuration must be a mapping, got {show(cfg)}")
    unknown = sorted(str(k) for k in set(cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config key; known: {', '.join(sorted(DEFAULTS))}")
    merged = {**DEFAULTS, **cfg}
    out: dict[str, Any] = {}
    for key, annotation in TOP_LEVEL.items():
        value = merged[key]
        if key in ("out", "observation") and isinstance(value, os.PathLike):
            value = os.fspath(value)
        out[key] = check_value(key, annotation, value)
    _check_device(out["device"])
    out["threat"] = check_mapping("threat", THREAT, merged["threat"], defaults=DEFAULTS["threat"])
    out["metrics"] = check_mapping("metrics", METRICS, merged["metrics"], defaults=DEFAULTS["metrics"])
    out["normalization"] = _check_normalization(merged["normalization"], out["channels"])

    dataset = _group_section(merged, "dataset")
    assert dataset is not None
    if isinstance(dataset.get("root"), os.PathLike):
        dataset["root"] = os.fspath(dataset["root"])
    out["dataset"] = check_mapping("dataset", DATASET, dataset, what=" of dataset")
    factory = _registered(DATASETS, "dataset.name", out["dataset"]["name"])
    split = out["dataset"].get("split")
    splits = tuple(getattr(factory, "splits", ()))
    if split is not None and splits and split not in splits:
        raise ConfigError(
            f"dataset.split: dataset '{out['dataset']['name']}' has the splits {', '.join(splits)},"
            f" got {show(split)}"
        )

    model = _group_section(merged, "model")
    assert model is not None
    factory = _registered(MODELS, "model.name", model["name"])
    training = {key: model.pop(key) for key in list(model) if key in VICTIM_TRAINING}
    if isinstance(training.get("checkpoint"), os.PathLike):
        training["checkpoint"] = os.fspath(training["checkpoint"])
    valid = model_options(model["name"]) + sorted(VICTIM_TRAINING)
    out["model"] = _check_keywords("model", model["name"], factory, model, valid)
    out["model"].update(check_mapping("model", VICTIM_TRAINING, training))
    _check_victim_training(out["model"], out["dataset"]["name"], splits)

    attack = _group_section(merged, "attack")
    assert attack is not None
    factory = _registered(ATTACKS, "attack.name", attack["name"])
    valid = [k for k in class_keywords(factory) if k not in ("device", "prior")]
    out["attack"] = _check_keywords("attack", attack["name"], factory, attack, valid)
    malicious = Capability.MALICIOUS_MODEL in getattr(factory, "requires", frozenset())
    if malicious and out["threat"]["server"] != "malicious":
        raise ConfigError(
            f"attack '{attack['name']}' changes the model the server sends; it needs threat.server=malicious"
            f" (the threat model is threat.server={out['threat']['server']})"
        )

    prior = _group_section(merged, "prior", optional=True)
    if prior is not None:
        factory = _registered(PRIORS, "prior.name", prior["name"])
        if isinstance(prior.get("weights"), os.PathLike):
            prior["weights"] = os.fspath(prior["weights"])
        out["prior"] = _check_keywords("prior", prior["name"], factory, prior, list(class_keywords(factory)))
        _check_exists("prior.weights", out["prior"].get("weights"))
    else:
        out["prior"] = None

    protocol = _group_section(merged, "protocol")
    assert protocol is not None
    if protocol["name"] not in PROTOCOLS:
        raise ConfigError(
            f"protocol.name: unknown protocol '{protocol['name']}'; known: {', '.join(sorted(PROTOCOLS))}"
        )
    factory = PROTOCOLS[protocol["name"]]
    out["protocol"] = _check_keywords(
        "protocol", protocol["name"], factory, protocol, list(class_keywords(factory))
    )

    defense = merged["defense"]
    if defense is None:
        defense = {}
    if not isinstance(defense, Mapping):
        raise ConfigError(f"defense: must be a name, a list of names or a mapping, got {show(defense)}")
    out["defense"] = {}
    for name, params in defense.items():
        factory = _registered(DEFENSES, f"defense.{name}", str(name))
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ConfigError(
                f"defense.{name}: must be a mapping of the defence's parameters (defense.{name}.<key>=...),"
                f" got {show(params)}"
            )
        out["defense"][name] = _check_keywords(
            f"defense.{name}",
            str(name),
            factory,
            dict(params),
            list(class_keywords(factory)),
            table=f"defense.{name}",
        )

    _check_exists("metrics.lpips_weights", out["metrics"].get("lpips_weights"))
    if out["observation"] is not None:
        _check_exists("observation", out["observation"])
        conflicts = observation_conflicts(out)
        if conflicts:
            raise ConfigError(
                f"{', '.join(conflicts)}: cannot apply to a saved observation (it fixes the data, the victim and the"
                " client side); leave them out when re-attacking one"
            )
    return out


def _check_victim_training(model: Mapping[str, Any], dataset: str, splits: tuple[str, ...]) -> None:
    """``model.checkpoint`` must be a file, ``model.pretrain_epochs`` ≥ 1 needs a data set with a train split."""
    checkpoint = model.get("checkpoint")
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        what = "is a folder" if Path(checkpoint).expanduser().is_dir() else "does not exist"
        raise ConfigError(f"model.checkpoint: the file {what} (a safetensors state dict is needed), got {show(checkpoint)}")
    if model.get("pretrain_epochs", 0) > 0 and "train" not in splits:
        from fedinvert.pretrain import training_datasets

        raise ConfigError(
            f"model.pretrain_epochs: dataset '{dataset}' has no train split to train the victim on;"
            f" data sets with one: {', '.join(training_datasets())}"
        )


def _check_exists(key: str, path: str | None) -> None:
    if path is not None and not Path(path).expanduser().exists():
        raise ConfigError(f"{key}: the file or folder does not exist, got {show(path)}")


# -- bounds on raw input ---------------------------------------------------------------------------------
def check_plain(data: Any, where: str = "", *, source: str | None = None) -> None:
    """Refuse what YAML can hold but a configuration must not: values other than strings, numbers, booleans,
    null, lists and string-keyed mappings (dates, binary), lists longer than `MAX_LIST_ENTRIES`, more than
    `MAX_NODES` values (aliases count each time they are used) or nesting deeper than `MAX_DEPTH`.

    ``where`` is the dotted key of ``data`` (empty for a whole file); ``source`` names the file in the
    message. Runs in time bounded by `MAX_NODES`.
    """
    lead = f"{source}: " if source else ""
    stack: list[tuple[str, Any, int]] = [(where, data, 0)]
    nodes = 1
    while stack:
        path, value, depth = stack.pop()
        label = path or "the top level"
        if depth > MAX_DEPTH:
            raise ConfigError(f"{lead}{show(label, 80)[1:-1]}: nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, (Mapping, list)):
            nodes += len(value)
            if nodes > MAX_NODES:
                raise ConfigError(
                    f"{lead}{label}: holds more than {MAX_NODES} values; a configuration is far smaller"
                )
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(f"{lead}{path + '.' if path else ''}{show(key)}: keys must be names")
                stack.append((f"{path}.{key}" if path else key, item, depth + 1))
        elif isinstance(value, list):
            if len(value) > MAX_LIST_ENTRIES:
                raise ConfigError(
                    f"{lead}{label}: must hold at most {MAX_LIST_ENTRIES} entries, got {len(value)}"
                )
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value))
        elif not (value is None or isinstance(value, (str, int, float, bool))):
            raise ConfigError(
                f"{lead}{label}: must be a string, number, true/false, null, list or mapping,"
                f" got {show(value)}"
            )


__all__ = [
    "DATASET",
    "MAX_ARGUMENT_CHARS",
    "MAX_CONFIG_BYTES",
    "METRICS",
    "NORMALIZATION",
    "RANGES",
    "THREAT",
    "TOP_LEVEL",
    "VICTIM_TRAINING",
    "check_mapping",
    "check_plain",
    "check_value",
    "config_type",
    "describe",
    "keyword_schema",
    "validate_config",
]
