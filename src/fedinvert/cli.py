"""The `fedinvert` command line: attack, sweep, tune, audit, report, demo, list, train-prior, verify-model.

Input errors print one line (``error: ...``) and exit with code 2; no traceback, nothing half-written.
``verify-model`` exits 0 when the received model is clean and 1 when it is suspicious.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fedinvert.errors import FedinvertError

RUN_MODULES = ("torch", "fedinvert.config", "fedinvert.runner")
"""What a command that runs attacks imports before its work (`_preload`)."""


def _preload(modules: Sequence[str], *, freeze: bool = True) -> None:
    """Import ``modules`` with Python's cyclic garbage collector paused, then freeze what exists.

    Importing torch and fedinvert leaves about 170,000 long-lived objects, and every full collection walks
    them all: 70-80 ms a pass on a 2-core machine, three passes during a LeNet run's imports. Frozen
    (`gc.freeze`), they sit in a permanent generation that later collections skip; nothing the command
    creates afterwards is exempt. Only the command line does this: a library user's process keeps its own
    collector settings, and so does a program that calls `main` with its own ``argv`` (``freeze=False``:
    the modules are imported, the collector left alone), since freezing keeps whatever exists at that moment,
    garbage included, for the rest of the process. docs/speed.md, "Fixed cost".

    Unless the user's environment says otherwise, pydantic's plugins are off
    (``PYDANTIC_DISABLE_PLUGINS=__all__``): looking them up scans every installed distribution's entry points
    (10 ms with 140 installed), and the command line's config checks have no use for them.
    """
    if freeze and modules:
        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
        gc.disable()
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        if freeze and modules:
            gc.freeze()
            gc.enable()


def _registries() -> dict[str, object]:
    from fedinvert.attacks import ATTACKS, DISTANCES, LABEL_METHODS
    from fedinvert.config import preset_names
    from fedinvert.data import DATASETS
    from fedinvert.metrics import METRICS
    from fedinvert.models import MODELS

    found: dict[str, object] = {
        "attacks": ATTACKS,
        "models": MODELS,
        "datasets": DATASETS,
        "metrics": METRICS,
        "distances": DISTANCES,
        "labels": LABEL_METHODS,
        "presets": preset_names(),
    }
    try:
        from fedinvert.priors import PRIORS

        found["priors"] = PRIORS
    except ImportError:  # pragma: no cover - priors are part of the package
        pass
    try:
        from fedinvert.defenses import DEFENSES  # type: ignore[attr-defined]

        found["defenses"] = DEFENSES
    except ImportError:
        found["defenses"] = []
    return found


def _summary(result) -> str:  # type: ignore[no-untyped-def]
    m = result.metrics

    def fmt(key: str, spec: str) -> str:
        value = m.get(key)
        return "n/a" if value is None else format(value, spec)

    where = f"  run folder: {result.out}" if result.out else ""
    flag = "  (interrupted: best so far)" if result.reconstruction.interrupted else ""
    reference, leakage = m.get("reference"), m.get("leakage_db")
    if reference is None or leakage is None:
        against = ""
    elif leakage > 0:
        against = f" (+{leakage:.1f} over the no-leak reference {reference['psnr']:.1f})"
    else:
        against = f" (no leak measured: {leakage:+.1f} vs the no-leak reference {reference['psnr']:.1f})"
    reid = ""
    if m.get("reid_top1") is not None:
        reid = f"  re-id {m['reid_top1']:.2f} (chance {1 / (m['reid_distractors'] + 1):.2f})"
    perceptual = "" if m.get("st_lpips") is None else f"  ST-LPIPS {m['st_lpips']:.4f}"
    return (
        f"PSNR {fmt('psnr', '.2f')} dB{against}  SSIM {fmt('ssim', '.3f')}{reid}{perceptual}"
        f"  label acc {fmt('label_accuracy', '.2f')}  {fmt('seconds', '.1f')} s{where}{flag}"
    )


def cmd_attack(args: argparse.Namespace) -> int:
    from fedinvert.config import load_preset, resolve_config
    from fedinvert.runner import run

    base = load_preset(args.config) if args.config else None
    if args.config and not Path(args.config).suffix:
        base = None
        args.overrides = [f"preset={args.config}", *args.overrides]
    cfg = resolve_config(args.overrides, base=base)
    if args.config and Path(args.config).name == "config.yaml" and not any(o.startswith("out=") for o in args.overrides):
        cfg["out"] = None  # re-running a run writes a new folder
    result = run(cfg, argv=["fedinvert", "attack", *args.overrides])
    print(_summary(result))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedinvert.errors import ConfigError
    from fedinvert.sweep import plan_sweep, run_sweep

    out = None
    overrides = []
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"argument {item!r} is not key=value (the study folder is out=DIR)")
        if key.strip() == "out":
            out = value
        else:
            overrides.append(item)
    plan = plan_sweep(
        args.study, out=out, executor=args.executor, jobs=args.jobs, address=args.address, threads=args.threads,
        full=args.full, overrides=overrides, command=["fedinvert", *args.argv], batch=args.batch,
    )
    if args.dry_run:
        print(f"{plan.study.name}: {len(plan.runs)} runs over {', '.join(plan.study.axis_keys) or 'no axes'}")
        return 0
    summary = run_sweep(plan, progress=not args.no_progress)
    print(summary.line())
    for error in summary.errors[:5]:
        print(f"  failed: {error}")
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from fedinvert.tune import plan_tune, run_tune

    plan = plan_tune(
        args.overrides, trials=args.trials, space=args.space, executor=args.executor, jobs=args.jobs,
        threads=args.threads, address=args.address, sampler_seed=args.sampler_seed,
        command=["fedinvert", *args.argv],
    )
    summary = run_tune(plan, progress=not args.no_progress)
    print("\n".join(summary.lines()))
    if summary.interrupted:
        return 130
    return 1 if not any(row.status == "complete" for row in summary.rows) else 0


def cmd_audit(args: argparse.Namespace) -> int:
    from fedinvert.audit import plan_audit, run_audit

    plan = plan_audit(args.overrides, budget=args.budget, threads=args.threads, command=["fedinvert", *args.argv])
    summary = run_audit(plan, progress=not args.no_progress)
    print("\n".join(summary.lines))
    return 130 if summary.interrupted else 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedinvert.report.study import text_report, write_report

    if args.text:
        print(text_report(args.folder), end="")
        return 0
    page = write_report(args.folder, out=args.out)
    print(f"report: {page}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fedinvert.demo import run_demo

    out = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("out=")), None)
    result = run_demo(args.overrides, out=out)
    print(f"GIFD                 {_summary(result.gifd)}")
    print(f"Inverting Gradients  {_summary(result.inverting_gradients)}")
    print(f"figure (private, GIFD, Inverting Gradients, no-leak guess): {result.figure}")
    if result.report is not None:
        print(f"report: {result.report}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    found = _registries()
    if args.details:
        from fedinvert.provenance import DETAIL_KINDS, format_details

        if args.kind is not None and args.kind not in DETAIL_KINDS:
            what = "has no weight or data files" if args.kind in found else "is not a kind"
            raise FedinvertError(f"list --details: '{args.kind}' {what}; --details covers {', '.join(DETAIL_KINDS)}")
        for kind in [args.kind] if args.kind else DETAIL_KINDS:
            print(format_details(kind))
        return 0
    kinds = [args.kind] if args.kind else sorted(found)
    for kind in kinds:
        if kind not in found:
            raise FedinvertError(f"unknown kind '{kind}' for list; known: {', '.join(sorted(found))}")
        names = list(found[kind])  # type: ignore[call-overload]
        print(f"{kind}: {', '.join(names) if names else '(none yet)'}")
    return 0


def cmd_train_prior(args: argparse.Namespace) -> int:
    import torch

    from fedinvert.priors.training import TrainSettings, export_generator, train_prior

    if args.threads is not None:
        if args.threads < 1:
            raise FedinvertError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    command = ["fedinvert", *args.argv]
    out = Path(args.out)
    if args.export_only:
        target = export_generator(
            checkpoint=out,
            export_dir=args.export_to or out,
            command=command,
            note=args.note,
            standing_samples=args.standing_samples,
        )
        print(f"exported the EMA generator to {target} (+ {target.with_suffix('.json').name})")
        return 0
    if args.steps is None and args.epochs is None:
        args.epochs = 20.0
    settings = TrainSettings(seed=args.seed, batch_size=args.batch_size)
    result = train_prior(
        out=out,
        steps=args.steps,
        epochs=args.epochs,
        settings=settings,
        sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every,
        resume=True if args.resume else None,
        command=command,
        progress=not args.no_progress,
        export_dir=args.export_to,
        standing_samples=args.standing_samples,
        restart_ema=args.restart_ema,
    )
    rate = result.train_seconds / max(result.step, 1)
    state = "interrupted; checkpoint saved, rerun the same command to resume" if result.interrupted else "done"
    print(
        f"{state}: step {result.step}/{result.total_steps} ({result.epochs:.2f} epochs),"
        f" {result.train_seconds:.0f} s training, {rate:.2f} s/step; checkpoint {result.checkpoint}"
    )
    return 130 if result.interrupted else 0


_VERIFY_DIMS = ("image_size", "channels", "num_classes")
_VERIFY_KEYS = ("model", "reference", *_VERIFY_DIMS)


def _verify_reference(overrides: Sequence[str]) -> tuple[object, tuple[int, int, int] | None]:
    """The agreed architecture of ``verify-model``'s ``key=value`` arguments: a spec for `verify_model`
    (``model=NAME`` with its dimensions and ``model.<option>=value``) or the state of ``reference=FILE``,
    and the input shape (C, H, W) when it is given."""
    import yaml

    from fedinvert.errors import ConfigError
    from fedinvert.verify import read_state

    given: dict[str, object] = {}
    options: dict[str, object] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"argument {item!r} is not key=value")
        if key.startswith("model.") and len(key) > len("model."):
            try:
                options[key[len("model."):]] = yaml.safe_load(raw) if raw else None
            except yaml.YAMLError:
                options[key[len("model."):]] = raw
            continue
        if key not in _VERIFY_KEYS:
            raise ConfigError(f"{key}: unknown key for verify-model; known: {', '.join(_VERIFY_KEYS)}, model.<option>")
        if key in _VERIFY_DIMS:
            try:
                value = int(raw, 10)
            except ValueError:
                raise ConfigError(f"{key}: must be a whole number, got {raw!r}") from None
            if value < 1:
                raise ConfigError(f"{key}: must be at least 1, got {value}")
            given[key] = value
        else:
            given[key] = raw
    shape = None
    if "image_size" in given and "channels" in given:
        size = int(given["image_size"])  # type: ignore[call-overload]
        shape = (int(given["channels"]), size, size)  # type: ignore[call-overload]
    if "reference" in given:
        if "model" in given or options:
            raise ConfigError("give either reference=FILE or model=NAME (with its options), not both")
        return read_state(str(given["reference"])), shape
    if "model" not in given:
        raise ConfigError("verify-model needs the agreed architecture: model=NAME image_size=… channels=…"
                          " num_classes=… [model.<option>=…], or reference=FILE")
    missing = [k for k in _VERIFY_DIMS if k not in given]
    if missing:
        raise ConfigError(f"{missing[0]}: missing; model={given['model']} needs {', '.join(_VERIFY_DIMS)}")
    spec = {"name": given["model"], "in_channels": given["channels"], "num_classes": given["num_classes"],
            "image_size": given["image_size"], **options}
    return spec, shape


def cmd_verify_model(args: argparse.Namespace) -> int:
    from fedinvert.verify import read_state, verify_model

    reference, shape = _verify_reference(args.overrides)
    verdict = verify_model(read_state(args.file), reference, image_shape=shape)  # type: ignore[arg-type]
    print(verdict.summary())
    return 1 if verdict.suspicious else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedinvert", description="Measure how much private image data leaks from federated-learning updates."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    attack = sub.add_parser("attack", help="run one attack: fedinvert attack key=value ...")
    attack.add_argument("--config", help="a preset name, a YAML file or a run's config.yaml to start from")
    attack.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. attack=idlg attack.restarts=2")
    attack.set_defaults(func=cmd_attack, preload=RUN_MODULES)
    sweep = sub.add_parser("sweep", help="run a study file's grid of runs: fedinvert sweep STUDY.yaml out=DIR")
    sweep.add_argument("study", help="the study file (YAML: base, axes, zip, replicates, compare, full)")
    sweep.add_argument("overrides", nargs="*", help="out=DIR (required), then key=value applied to every run")
    sweep.add_argument("--executor", default="local", help="local (default: this machine) or ray")
    sweep.add_argument("--jobs", type=int, default=1, help="runs at once (local processes, or a local Ray's CPUs)")
    sweep.add_argument("--address", help="a running Ray cluster's address (with --executor ray)")
    sweep.add_argument("--threads", type=int, help="torch CPU threads per run (default: cores / jobs)")
    sweep.add_argument("--full", action="store_true", help="the study's paper-scale settings (its full: section)")
    sweep.add_argument("--batch", type=int, default=1,
                       help="run up to N runs that differ only in the study's replicates (its private batches) as"
                            " one batched attack (local executor; Inverting Gradients on plain gradients)")
    sweep.add_argument("--dry-run", action="store_true", help="check the study and print its size; run nothing")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.set_defaults(func=cmd_sweep, preload=RUN_MODULES)
    tune = sub.add_parser(
        "tune", help="search an attack's hyper-parameters (Optuna) by the gradient distance it reaches: fedinvert tune"
                     " key=value ... --trials N out=DIR",
    )
    tune.add_argument("overrides", nargs="*", help="the scenario as for `fedinvert attack`, and out=DIR (required)")
    tune.add_argument("--trials", type=int, required=True, help="finished trials the tune should hold (trial 0: the"
                      " configuration as given)")
    tune.add_argument("--space", action="append", default=[], help="KEY=LOW:HIGH[:linear], KEY=A,B,..., KEY=none or"
                      " a YAML file of them; changes the attack's default search space key by key (repeatable)")
    tune.add_argument("--executor", default="local", help="local (default: this machine) or ray")
    tune.add_argument("--jobs", type=int, default=1, help="trials asked and run at once")
    tune.add_argument("--address", help="a running Ray cluster's address (with --executor ray)")
    tune.add_argument("--threads", type=int, help="torch CPU threads per trial (default: cores / jobs)")
    tune.add_argument("--sampler-seed", type=int, default=0, help="the TPE sampler's seed (default 0)")
    tune.add_argument("--no-progress", action="store_true", help="no progress bar")
    tune.set_defaults(func=cmd_tune, intermixed=True, preload=RUN_MODULES)
    audit = sub.add_parser(
        "audit", help="audit your own FL setup: one attack per family, defences at stronger settings, accuracy cost,"
                      " verify-model, three-phase advice: fedinvert audit key=value ... [--budget quick] out=DIR",
    )
    audit.add_argument("overrides", nargs="*", help="your setup as for `fedinvert attack` (model, dataset, protocol,"
                       " batch_size, defense, threat.server, ...), out=DIR (required), budget.<field>=value")
    audit.add_argument("--budget", default="quick", help="quick (default: minutes on a CPU), standard, or full"
                       " (paper scale, for a GPU)")
    audit.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    audit.add_argument("--no-progress", action="store_true", help="no progress bar")
    audit.set_defaults(func=cmd_audit, intermixed=True, preload=RUN_MODULES)
    report = sub.add_parser("report", help="a study folder's tables and pictures as one HTML page (or --text)")
    report.add_argument("folder", help="the study folder a sweep wrote")
    report.add_argument("--text", action="store_true", help="print the tables as text instead")
    report.add_argument("--out", help="the page to write (default: FOLDER/report.html)")
    report.set_defaults(func=cmd_report)
    demo = sub.add_parser(
        "demo", help="GIFD beside Inverting Gradients on one real face, with the no-leak reference (demo.png)"
    )
    demo.add_argument("overrides", nargs="*")
    demo.set_defaults(func=cmd_demo, preload=RUN_MODULES)
    lister = sub.add_parser("list", help="list registered attacks, models, datasets, priors, defences, metrics")
    lister.add_argument("kind", nargs="?")
    lister.add_argument(
        "--details", action="store_true",
        help="for priors, datasets, models and metrics: every file's source, licence, SHA-256 and the command that made it",
    )
    lister.set_defaults(func=cmd_list, preload=("torch",))
    train = sub.add_parser(
        "train-prior",
        help="train the class-conditional `fashion` prior on Fashion-MNIST (resumes from --out), or export it",
    )
    train.add_argument("--out", required=True, help="checkpoint folder (resumed automatically if it holds one)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="total steps, counting steps already done")
    length.add_argument("--epochs", type=float, help="total passes over the train split (default 20)")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--sample-every", type=int, default=500, help="steps between sample grids (0: only at the end)")
    train.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    train.add_argument("--resume", action="store_true", help="require a checkpoint in --out to resume")
    train.add_argument("--export-to", help="folder for fashion.safetensors + fashion.json (default: --out)")
    train.add_argument(
        "--export-only", action="store_true", help="export the checkpoint's EMA generator now, without training"
    )
    train.add_argument("--note", help="a remark stored in the exported JSON (with --export-only)")
    train.add_argument(
        "--standing-samples", type=int, default=1000, help="own samples for the exported batch-norm statistics"
    )
    train.add_argument(
        "--restart-ema",
        action="store_true",
        help="restart the generator's weight average from the live weights at the resumed step",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train_prior, preload=("torch",))
    verify = sub.add_parser(
        "verify-model",
        help="check a received model (safetensors) against the agreed architecture; exit 0 clean, 1 suspicious",
    )
    verify.add_argument("file", help="the received state dict, e.g. a run's sent_model.safetensors")
    verify.add_argument(
        "overrides", nargs="*",
        help="model=NAME image_size=N channels=C num_classes=K [model.<option>=value], or reference=FILE",
    )
    verify.set_defaults(func=cmd_verify_model, preload=("torch",))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "intermixed", False) and not any(e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]  # `tune k=v --trials N out=DIR`: key=value after options too
        extra = []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        _preload(getattr(args, "preload", ()), freeze=argv is None)  # the program itself, not a caller's main()
        return int(args.func(args))
    except FedinvertError as err:
        print(f"error: {' '.join(str(err).splitlines())}", file=sys.stderr)  # one line, whatever the message
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The `fedinvert` program (its console script and ``python -m fedinvert``): `main`, then `exit_now`."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the program with ``code`` without the interpreter's teardown of its modules.

    A normal exit runs the ``atexit`` handlers, then frees every module and object the imports made: about
    0.1 s after importing torch on a 2-core machine, a cost that buys a finished program nothing. Here the
    ``atexit`` handlers still run (temporary folders, weakref finalizers, logging, inductor's workers) and the
    standard streams are flushed, then the process ends (`os._exit`). Where a thread that is not a daemon is
    still running, whose end a normal exit would wait for, or this interpreter has no way to run the handlers,
    it exits normally instead. docs/speed.md, "Fixed cost".
    """
    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    waiting = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if run_handlers is None or waiting:
        sys.exit(code)
    run_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a closed pipe or stream: nowhere to write
            stream.flush()
    os._exit(code)
