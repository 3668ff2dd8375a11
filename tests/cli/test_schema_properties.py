"""Property: every key of the config schema refuses a value of the wrong type with one line and exit 2.

The keys: every top-level key and section, the fixed sections (``threat``, ``dataset``, ``metrics``), and the
keywords of every registered attack, defence, model, prior and protocol (read from the same annotations the
schema checks). For each, hypothesis draws values of the kinds its annotation does not admit (a string for
a number, a non-integral float for an integer, a boolean for a number, a list or mapping for a scalar, null
for a required value), writes them into a YAML config file and runs ``fedinvert attack --config FILE``.
The run must stop in the config check: the scenario builder, the attack builder and the output preparation
are tripwires, and the working folder holds only the config file afterwards.
"""

import math
import os
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedinvert.runner
from fedinvert.attacks import ATTACKS
from fedinvert.cli import main
from fedinvert.config import class_keywords
from fedinvert.config.validation import DATASET, METRICS, THREAT, TOP_LEVEL, keyword_schema
from fedinvert.defenses import DEFENSES
from fedinvert.models.base import MODELS, model_options
from fedinvert.priors import PRIORS
from fedinvert.runner import PROTOCOLS

KINDS = ("bool", "int", "float", "str", "none", "list", "dict")


def admitted(annotation) -> set[str]:
    """The kinds of YAML value an annotation can accept (an int is accepted for a float)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return admitted(args[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(admitted(a) for a in args))
    if origin is typing.Literal:
        names = {bool: "bool", int: "int", str: "str", type(None): "none"}
        return {names[type(a)] for a in args}
    if origin in (list, tuple) or annotation in (list, tuple):
        return {"list"}
    if origin is dict or annotation is dict:
        return {"dict"}
    simple = {bool: {"bool"}, int: {"int"}, float: {"int", "float"}, str: {"str"}, type(None): {"none"}}
    if annotation is typing.Any:
        return set(KINDS)
    return simple.get(annotation, set())


def wrong_values(accepts: set[str]) -> st.SearchStrategy:
    """Values of every kind ``accepts`` leaves out (a float for an integer key is never a whole number)."""
    floats = st.floats(allow_nan=True, allow_infinity=True)
    if "int" in accepts:
        floats = floats.filter(lambda x: not (math.isfinite(x) and x.is_integer()))
    pool = {
        "bool": st.booleans(),
        "int": st.integers(-(10**12), 10**12),
        "float": floats,
        "str": st.text(alphabet="abcxyz-_", min_size=1, max_size=6),
        "none": st.none(),
        "list": st.lists(st.integers(0, 9), max_size=3),
        "dict": st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 9), min_size=1, max_size=2),
    }
    return st.one_of([pool[k] for k in KINDS if k not in accepts])


def _cases():
    """(dotted key, the config holding a value at that key as a function of the value, admitted kinds)."""
    cases = []
    for key, annotation in TOP_LEVEL.items():
        cases.append((key, lambda v, key=key: {key: v}, admitted(annotation)))
    sections = {
        "threat": {"dict"},
        "metrics": {"dict"},
        "normalization": {"str", "dict"},
        "defense": {"str", "list", "dict", "none"},
        "prior": {"str", "dict", "none"},
    }
    sections.update(dict.fromkeys(("attack", "model", "dataset", "protocol"), {"str", "dict"}))
    for key, kinds in sections.items():
        cases.append((key, lambda v, key=key: {key: v}, kinds))
    for section, spec in (("threat", THREAT), ("metrics", METRICS), ("dataset", DATASET)):
        for key, annotation in spec.items():
            cases.append((f"{section}.{key}", lambda v, s=section, k=key: {s: {k: v}}, admitted(annotation)))
    groups = [
        ("attack", ATTACKS, lambda f: [k for k in class_keywords(f) if k not in ("device", "prior")]),
        ("prior", PRIORS, lambda f: list(class_keywords(f))),
    ]
    seen = set()  # a keyword the same type in several classes (lr, tv, ...) is one case, with its first class
    for group, registry, keys_of in groups:
        for name in registry.names():
            factory = registry.get(name)
            for key, annotation in keyword_schema(group, factory, keys_of(factory)).items():
                if (group, key, repr(annotation)) in seen:
                    continue
                seen.add((group, key, repr(annotation)))
                cases.append(
                    (
                        f"{group}.{key}",
                        lambda v, g=group, n=name, k=key: {g: {"name": n, k: v}},
                        admitted(annotation),
                        name,
                    )
                )
    for name in MODELS.names():
        factory = MODELS.get(name)
        for key, annotation in keyword_schema("model", factory, model_options(name)).items():
            cases.append(
                (
                    f"model.{key}",
                    lambda v, n=name, k=key: {"model": {"name": n, k: v}},
                    admitted(annotation),
                    name,
                )
            )
    for name, factory in PROTOCOLS.items():
        for key, annotation in keyword_schema("protocol", factory, list(class_keywords(factory))).items():
            cases.append(
                (
                    f"protocol.{key}",
                    lambda v, n=name, k=key: {"protocol": {"name": n, k: v}},
                    admitted(annotation),
                    name,
                )
            )
    for name in DEFENSES.names():
        factory = DEFENSES.get(name)
        schema = keyword_schema("defense", factory, list(class_keywords(factory)), table=f"defense.{name}")
        for key, annotation in schema.items():
            cases.append(
                (
                    f"defense.{name}.{key}",
                    lambda v, n=name, k=key: {"defense": {n: {k: v}}},
                    admitted(annotation),
                )
            )
    return [(c[0], c[1], c[2], c[3] if len(c) > 3 else "") for c in cases if set(KINDS) - c[2]]


CASES = _cases()


def _tripwire(*_args, **_kwargs):
    raise AssertionError("a wrongly typed value got past the schema check")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("build_scenario", "build_attack", "_prepare_out"):
        monkeypatch.setattr(fedinvert.runner, name, _tripwire)
    return tmp_path


def test_every_registered_class_contributes_keys():
    keys = {key for key, *_ in CASES}
    for needle in (
        "attack.lr",
        "attack.iterations",
        "attack.steps_per_stage",
        "defense.gaussian_noise.std",
        "defense.quantization.bits",
        "model.width",
        "prior.weights",
        "protocol.shuffle_seed",
        "batch_size",
        "seed",
        "overwrite",
        "threat.labels",
        "dataset.label_map",
        "metrics.st_lpips",
    ):
        assert needle in keys, needle
    assert len(CASES) > 100


@pytest.mark.parametrize(
    ("key", "config", "accepts", "name"),
    CASES,
    ids=[f"{key}[{name}]" if name else key for key, _, _, name in CASES],
)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_wrongly_typed_value_is_one_line_and_exit_2(workdir, capsys, key, config, accepts, name, data):
    value = data.draw(wrong_values(accepts), label=key)
    path = Path(workdir) / "config.yaml"
    path.write_text(yaml.safe_dump(config(value)))
    code = main(["attack", "--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and key in err, err
    assert os.listdir(workdir) == ["config.yaml"]


FLOAT_KEYS = [(key, config, name) for key, config, accepts, name in CASES if "float" in accepts]


@pytest.mark.parametrize(
    ("key", "config", "name"),
    FLOAT_KEYS,
    ids=[f"{key}[{name}]" if name else key for key, _, name in FLOAT_KEYS],
)
def test_every_float_key_refuses_nan_and_inf(workdir, capsys, key, config, name):
    path = Path(workdir) / "config.yaml"
    for value in (math.nan, math.inf, -math.inf):
        path.write_text(yaml.safe_dump(config(value)))
        assert main(["attack", "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and key in err and "finite" in err, err
