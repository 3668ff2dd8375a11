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


def run_code(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)


def test_exit_now_runs_the_exit_handlers_flushes_and_keeps_the_code(tmp_path) -> None:
    marker = tmp_path / "handler-ran"
    done = run_code(
        "import atexit, sys, tempfile, weakref\n"
        "from pathlib import Path\n"
        "from fedinvert.cli import exit_now\n"
        f"atexit.register(lambda: Path({str(marker)!r}).write_text('yes'))\n"
        "scratch = tempfile.TemporaryDirectory()\n"  # removed by its weakref finalizer at exit
        f"Path({str(tmp_path / 'scratch-name')!r}).write_text(scratch.name)\n"
        "sys.stdout.write('x' * 100_000)\n"  # more than a pipe's buffer holds: flushed, not lost
        "exit_now(3)\n"
        "print('not reached')\n"
    )
    assert done.returncode == 3
    assert done.stdout == "x" * 100_000
    assert marker.read_text() == "yes"
    assert not os.path.exists((tmp_path / "scratch-name").read_text())


def test_exit_now_waits_for_a_running_thread_as_a_normal_exit_does(tmp_path) -> None:
    marker = tmp_path / "thread-finished"
    done = run_code(
        "import threading, time\n"
        "from pathlib import Path\n"
        "from fedinvert.cli import exit_now\n"
        "def work():\n"
        "    time.sleep(0.5)\n"
        f"    Path({str(marker)!r}).write_text('done')\n"
        "threading.Thread(target=work).start()\n"
        "exit_now(4)\n"
    )
    assert done.returncode == 4
    assert marker.read_text() == "done"


def test_the_program_skips_the_teardown_and_exits_with_mains_code() -> None:
    """`python -m fedinvert` ends through `exit_now`: a module's finalizer that a normal teardown would run
    (here: a `__del__` on an object kept in a module) does not run, and the exit code is main's."""
    done = run_code(
        "import sys, types\n"
        "class Loud:\n"
        "    def __del__(self):\n"
        "        sys.stderr.write('torn down\\n')\n"
        "holder = types.ModuleType('holder'); holder.kept = Loud(); sys.modules['holder'] = holder\n"
        "sys.argv = ['fedinvert', 'list']\n"
        "import runpy\n"
        "runpy.run_module('fedinvert', run_name='__main__')\n"
    )
    assert done.returncode == 0, done.stderr
    assert "inverting_gradients" in done.stdout
    assert "torn down" not in done.stderr
    unknown = run_code("import sys, runpy\nsys.argv = ['fedinvert', 'attack', 'attack=no_such_attack']\n"
                       "runpy.run_module('fedinvert', run_name='__main__')\n")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error:"), unknown.stderr
