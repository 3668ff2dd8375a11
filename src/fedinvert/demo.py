"""`fedinvert demo`: GIFD beside Inverting Gradients on the same private image, with the no-leak reference.

Both attacks see the very same observation: the two runs share every scenario key (data, indices, victim,
protocol, seed), so the victim, the private batch and the shared gradient are identical; only the attack
differs. The demo writes one run folder per attack below a common folder and a figure ``demo.png`` with the
private image, both matched reconstructions and the best no-leak guess (the constant or mean image of the
public images) side by side, each captioned with its PSNR.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedinvert.errors import ConfigError

#: The scenario both attacks see: a real photo (the rocket, 32 px) through a half-width ReLU ConvNet, the face
#: DCGAN as GIFD's prior (out of its distribution), labels inferred. Over 8 photos at this budget both leak
#: (benchmarks/results/convergence_demo.csv: GIFD +4.64 ± 4.10 dB, IG +5.09 ± 4.31 over the no-leak reference);
#: over the 8 photos of benchmarks/gen_gia.yaml at 1000 evaluations neither does measurably (docs/results/gen_gia).
DEMO_SCENARIO = ["dataset=photos", "dataset.indices=[3]", "dataset.unique_labels=true", "batch_size=1",
                 "image_size=32", "model=convnet", "model.width=0.5", "prior=face-dcgan", "seed=6", "progress=false"]
#: GIFD's demo budget: 5 stages × 60 steps × 2 restarts (eager; compiling would cost more than it saves).
DEMO_GIFD = ["attack=gifd", "attack.steps_per_stage=60", "attack.restarts=2", "attack.compile=false"]
#: Inverting Gradients at the same number of gradient evaluations (5 × 60 × 2).
DEMO_IG = ["attack=inverting_gradients", "attack.iterations=300", "attack.restarts=2", "attack.compile=false"]


@dataclass
class DemoResult:
    """The demo's two runs (`fedinvert.runner.RunResult`) and the figure it wrote (None without writing)."""

    gifd: object
    inverting_gradients: object
    folder: Path | None
    figure: Path | None
    report: Path | None = None


def demo_configs(overrides: Sequence[str] = (), *, out: str | None = None) -> tuple[dict, dict, Path]:
    """The two resolved, checked configs and the demo folder, before any work.

    ``overrides`` change the shared scenario (``seed=3``, ``dataset.indices=[7]``, ``device=cuda``, ...);
    ``attack.*`` overrides apply to GIFD alone (its keywords are not Inverting Gradients').
    """
    from fedinvert.config import resolve_config
    from fedinvert.config.validation import validate_config

    shared = [o for o in overrides if not o.startswith(("attack.", "attack=", "out=", "overwrite="))]
    gifd_only = [o for o in overrides if o.startswith("attack.")]
    if any(o.startswith(("attack=", "overwrite=")) for o in overrides):
        raise ConfigError("demo: the attacks are fixed (GIFD and Inverting Gradients) and it never overwrites")
    folder = Path(out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if folder.exists():
        raise ConfigError(f"demo: {folder} exists; choose another out=")
    gifd = resolve_config([*DEMO_SCENARIO, *DEMO_GIFD, *shared, *gifd_only, f"out={folder / 'gifd'}"])
    ig = resolve_config([*DEMO_SCENARIO, *DEMO_IG, *shared, f"out={folder / 'inverting_gradients'}"])
    return validate_config(gifd), validate_config(ig), folder


def run_demo(overrides: Sequence[str] = (), *, out: str | None = None, write: bool = True) -> DemoResult:
    """Run GIFD, then Inverting Gradients on the same observation; write ``demo.png`` beside the run folders."""
    from fedinvert.runner import run

    gifd_cfg, ig_cfg, folder = demo_configs(overrides, out=out)
    gifd = run(gifd_cfg, write=write, argv=["fedinvert", "demo", *overrides])
    ig = run(ig_cfg, write=write, argv=["fedinvert", "demo", *overrides])
    figure = folder / "demo.png" if write else None
    report = None
    if figure is not None:
        save_demo_figure(figure, gifd, ig)
        report = write_demo_report(folder, gifd, ig, command=" ".join(["fedinvert", "demo", *overrides]))
    return DemoResult(gifd=gifd, inverting_gradients=ig, folder=folder if write else None, figure=figure,
                      report=report)


def write_demo_report(folder: Path, gifd, ig, *, command: str) -> Path:  # type: ignore[no-untyped-def]
    """The demo's two runs as a study folder (sweep.json, results.csv) and its HTML report."""
    import json

    from fedinvert.report.study import write_report
    from fedinvert.sweep.store import ResultLine, index_runs

    lines = []
    for result in (gifd, ig):
        name = Path(result.out).name
        metrics = json.loads((Path(result.out) / "metrics.json").read_text())
        lines.append(ResultLine(name, "ok", None, {"attack.name": result.config["attack"]["name"]}, metrics, name))
    index_runs(folder, name="demo", axes=["attack.name"], lines=lines, command=command,
               description="GIFD beside Inverting Gradients on one real photo, with the no-leak reference")
    return write_report(folder)


def save_demo_figure(path: Path, gifd, ig) -> None:  # type: ignore[no-untyped-def]
    """Private row, GIFD row, Inverting Gradients row, no-leak guess row; PSNRs in the row labels."""
    import torch

    from fedinvert.report import save_grid
    from fedinvert.runner import reference_row

    scenario = gifd.scenario
    if scenario.private is None:
        return
    rows, names = [scenario.private], ["private"]
    for label, result in (("GIFD", gifd), ("Inv. Gradients", ig)):
        order = torch.as_tensor(result.metrics["order"])
        rows.append(result.reconstruction.images[order])
        names.append(f"{label} {_db(result.metrics.get('psnr'))}")
    guess = reference_row(scenario, gifd.metrics)
    if guess is not None:
        rows.append(guess[0])
        names.append(f"no-leak {_db(gifd.metrics['reference']['psnr'])}")
    save_grid(path, rows, labels=names)


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} dB"
