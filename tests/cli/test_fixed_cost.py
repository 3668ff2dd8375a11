"""What the command line does before any work: lazy package names, imports with the collector paused
(docs/speed.md, "Fixed cost"). Each check runs in a fresh interpreter, whose imports and collector it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def fresh(code: str, **env: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object, returned here."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
        env={**os.environ, **env},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_command_line_module_imports_neither_torch_nor_pydantic() -> None:
    seen = fresh("import json, sys; import fedinvert.cli; "
                 "print(json.dumps({m: m in sys.modules for m in ('torch', 'pydantic', 'deepmerge', 'numpy')}))")
    assert seen == {"torch": False, "pydantic": False, "deepmerge": False, "numpy": False}


def test_package_names_resolve_on_first_use() -> None:
    import fedinvert
    from fedinvert.errors import ConfigError
    from fedinvert.observation import Observation

    assert fedinvert.Observation is Observation and fedinvert.ConfigError is ConfigError
    for name in fedinvert.__all__:
        assert getattr(fedinvert, name) is not None
    assert set(fedinvert.__all__) <= set(dir(fedinvert))
    with pytest.raises(AttributeError, match="no attribute 'Observatoin'"):
        _ = fedinvert.Observatoin  # type: ignore[attr-defined]


def test_preload_imports_with_the_collector_paused_then_freezes_and_reenables_it() -> None:
    seen = fresh(
        "import gc, json, sys\n"
        "from fedinvert.cli import _preload\n"
        "before = gc.get_freeze_count()\n"
        "_preload(('fractions', 'decimal'))\n"
        "print(json.dumps({'enabled': gc.isenabled(), 'before': before, 'after': gc.get_freeze_count(),\n"
        "                  'imported': 'fractions' in sys.modules and 'decimal' in sys.modules,\n"
        "                  'plugins': __import__('os').environ.get('PYDANTIC_DISABLE_PLUGINS')}))\n"
    )
    assert seen["enabled"] and seen["imported"]
    assert seen["before"] == 0 and seen["after"] > 1000  # the interpreter's and the imports' objects
    assert seen["plugins"] == "__all__"


def test_preload_of_nothing_changes_nothing_and_a_user_setting_is_kept() -> None:
    seen = fresh(
        "import gc, json, os\n"
        "from fedinvert.cli import _preload\n"
        "_preload(())\n"
        "kept = (gc.isenabled(), gc.get_freeze_count(), os.environ.get('PYDANTIC_DISABLE_PLUGINS'))\n"
        "_preload(('fractions',))\n"
        "print(json.dumps({'nothing': kept, 'after': os.environ.get('PYDANTIC_DISABLE_PLUGINS')}))\n",
        PYDANTIC_DISABLE_PLUGINS="logfire",
    )
    assert seen["nothing"] == [True, 0, "logfire"]
    assert seen["after"] == "logfire"


def test_a_caller_of_main_keeps_its_collector() -> None:
    seen = fresh(
        "import gc, json, os\n"
        "from fedinvert.cli import _preload, main\n"
        "_preload(('fractions',), freeze=False)\n"
        "code = main(['list'])\n"
        "print(json.dumps({'frozen': gc.get_freeze_count(), 'enabled': gc.isenabled(), 'code': code,\n"
        "                  'plugins': os.environ.get('PYDANTIC_DISABLE_PLUGINS')}))\n"
    )
    assert seen == {"frozen": 0, "enabled": True, "code": 0, "plugins": None}


def test_the_program_freezes_its_imports() -> None:
    seen = fresh(
        "import gc, json, sys\n"
        "sys.argv = ['fedinvert', 'list']\n"
        "from fedinvert.cli import main\n"
        "code = main()\n"
        "print(json.dumps({'frozen': gc.get_freeze_count(), 'enabled': gc.isenabled(), 'code': code}))\n"
    )
    assert seen["code"] == 0 and seen["enabled"] and seen["frozen"] > 100_000  # torch's objects among them


def test_preload_leaves_the_collector_on_when_an_import_fails() -> None:
    seen = fresh(
        "import gc, json\n"
        "from fedinvert.cli import _preload\n"
        "try:\n"
        "    _preload(('no_such_module_here',))\n"
        "except ImportError:\n"
        "    pass\n"
        "print(json.dumps({'enabled': gc.isenabled()}))\n"
    )
    assert seen["enabled"]


def test_every_command_that_runs_attacks_preloads_the_runner() -> None:
    import argparse

    from fedinvert.cli import RUN_MODULES, build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    preload = {name: sub.get_default("preload") for name, sub in commands.choices.items()}
    assert {name for name, modules in preload.items() if modules == RUN_MODULES} == {
        "attack", "sweep", "tune", "audit", "demo"
    }
    assert preload["list"] == preload["train-prior"] == preload["verify-model"] == ("torch",)
