"""fedinvert's speed against plain PyTorch loops and breaching 0.1.2, measured in one run: four tables.

* **ig**: Inverting Gradients, ms an iteration, of a bare loop (what research code does: forward,
  cross-entropy, `autograd.grad(create_graph=True)`, one global cosine over all parameter gradients plus TV,
  backward to the dummy image, signed Adam, box clamp), fedinvert eager and compiled, and breaching 0.1.2;
* **gifd**: GIFD on the face prior (face-dcgan, all five stages), ms an evaluation, of a bare GIFD loop
  (`bare_gifd_loop`) and fedinvert eager (and compiled with ``--gifd-compiled``);
* **restarts**: 4 restarts against 1, IG eager and compiled and GIFD eager;
* **process**: whole processes, ``fedinvert attack`` against a plain script, IG and GIFD (`process.py`);
* **batches** (not by default): a study's private batches in one batch (`batched_batches.py`).

Victims are LeNet-DLG, ConvNet and ResNet-18 at B = 1 and 8, 32 × 32 RGB. ms an iteration is the marginal cost of
one more iteration (a short and a long run differenced), so fixed per-run costs cancel in every column;
compilation time is reported apart.

    OMP_NUM_THREADS=1 python benchmarks/speed.py --threads 1 --breaching-python PY   # everything, one thread
    OMP_NUM_THREADS=1 python benchmarks/speed.py --threads 1 --sections ig --victims lenet-dlg,convnet --repeats 3
    python benchmarks/speed.py --device cuda --sections ig,gifd,restarts,batches       # on a GPU (gpu_check.sh)

The "breaching ms" column is breaching 0.1.2's ``invertinggradients`` attack (its own configuration; only
``optim.max_iterations`` and ``restarts.num_trials = 1`` set, true labels given) on the same victim and observed
gradient, measured the same way (warm-up, short and long runs differenced) by ``breaching_speed.py`` in a scratch
interpreter given by ``--breaching-python`` or the environment variable FEDINVERT_BREACHING_PYTHON (breaching is
no fedinvert dependency). Without one the column reads "–". The scratch environment, outside the repository:

    python3 -m venv /work/scratch/breaching-venv
    /work/scratch/breaching-venv/bin/pip install torch==2.13.0
    /work/scratch/breaching-venv/bin/pip install breaching==0.1.2 torch==2.13.0 torchvision==0.28.0 scikit-image
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.fx
import torch.nn.functional as F
from _tables import fmt, write_csv
from bare_process import project_l1

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.objectives import total_variation
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation

BREACHING_SCRIPT = Path(__file__).resolve().parent / "breaching_speed.py"
BREACHING_INSTALL = (
    "python3 -m venv /work/scratch/breaching-venv && /work/scratch/breaching-venv/bin/pip install torch==2.13.0"
    " && /work/scratch/breaching-venv/bin/pip install breaching==0.1.2 torch==2.13.0 torchvision==0.28.0"
    " scikit-image"
)


def bare_loop(model, target, labels, shape, *, iterations: int, tv: float = 1e-4, device: str = "cpu") -> float:
    """Seconds per iteration of the plain eager loop (no fedinvert code)."""
    model = copy.deepcopy(model).to(device)
    target, labels = [t.to(device) for t in target], labels.to(device)
    params = [p for p in model.parameters()]
    x = torch.randn(shape, device=device, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)
    tnorm = torch.sqrt(sum((t * t).sum() for t in target))
    for it in range(iterations + 5):
        if it == 5:
            sync(device)
            start = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
        gnorm = torch.sqrt(sum((g * g).sum() for g in grads))
        rec = 1 - dot / (gnorm * tnorm) + tv * total_variation(x)
        (gx,) = torch.autograd.grad(rec, [x])
        x.grad = gx.sign()
        opt.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
    sync(device)
    return (time.perf_counter() - start) / iterations


def bare_gifd_loop(
    generator, model, target, labels, shape, *, steps: int, lr: float = 0.3, tv: float = 1e-4,
    norm: float = 1e-6, radii: tuple[float, ...] = (0.1, 0.3, 0.6, 1.0), device: str = "cpu"
) -> float:
    """Seconds per step of a plain GIFD loop (no fedinvert code) through the DCGAN ``generator`` (an
    ``nn.Sequential`` of four ConvTranspose-BatchNorm-ReLU blocks, then a ConvTranspose and tanh): the latent
    stage, renormalised to its start norm after every step, then the input of each later block, its deviation
    from the stage's start projected onto the ℓ1 ball of radius ``radii[k - 1]`` times the start's ℓ1 norm.
    A step: render from the stage, [-1, 1] to [0, 1], block-average to the victim's size, normalise (0.5),
    cross-entropy, `autograd.grad(create_graph=True)`, 1 − cosine + ``tv``·TV + ``norm``·‖x‖₂/(H·W), backward to
    the stage variable, Adam, projection. Each stage runs ``steps`` + 5 steps; the first 5 are not timed."""
    generator = copy.deepcopy(generator).to(device).eval().requires_grad_(False)
    model = copy.deepcopy(model).to(device)
    target, labels = [t.to(device) for t in target], labels.to(device)
    params = [p for p in model.parameters()]
    tnorm = torch.sqrt(sum((t * t).sum() for t in target))
    batch, height = shape[0], shape[2]
    z = torch.randn(batch, 100, device=device)
    start = z
    timed = 0.0
    for k in range(5):
        if k > 0:
            with torch.no_grad():
                start = generator[3 * k - 3 : 3 * k](start.reshape(batch, 100, 1, 1) if k == 1 else start)
        rest = generator[3 * k :]
        x = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        start_norm = start.norm(dim=1, keepdim=True) if k == 0 else None
        radius = radii[k - 1] * start.flatten(1).abs().sum(dim=1) if k > 0 else None
        for it in range(steps + 5):
            if it == 5:
                sync(device)
                began = time.perf_counter()
            opt.zero_grad()
            images = (rest(x.reshape(batch, 100, 1, 1) if k == 0 else x) + 1) / 2
            inputs = (F.avg_pool2d(images, images.shape[-1] // height) - 0.5) / 0.5
            loss = F.cross_entropy(model(inputs), labels)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
            gnorm = torch.sqrt(sum((g * g).sum() for g in grads))
            rec = 1 - dot / (gnorm * tnorm) + tv * total_variation(inputs) + norm * inputs.norm() / height**2
            (gx,) = torch.autograd.grad(rec, [x])
            x.grad = gx
            opt.step()
            with torch.no_grad():
                if k == 0:
                    x.mul_(start_norm / x.norm(dim=1, keepdim=True))
                else:
                    deviation = project_l1((x - start).flatten(1), radius)
                    x.copy_(start + deviation.reshape(x.shape))
        sync(device)
        timed += time.perf_counter() - began
        start = x.detach()
    return timed / (5 * steps)


def runs_ms(seconds: list[float]) -> str:
    """Each interleaved run's figure, ms, for the log."""
    return " ".join(f"{s * 1e3:.2f}" for s in seconds)


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def fedinvert_loop(
    obs, *, iterations: int, compile: bool, attack: str = "inverting_gradients", restarts: int = 1,
    device: str = "cpu", **options
) -> tuple[float, float]:
    """(seconds per evaluation, compile seconds) of one fedinvert attack on the observation.

    After a discarded warm-up run: two runs, a short one and one ``iterations`` longer (steps, or steps a stage
    for GIFD); their time difference over the extra evaluations is the cost of one more, so the fixed costs of
    a run (copying the victim, label inference, compilation) cancel. An evaluation is one gradient-matching
    step of all restarts at once (GIFD: of one stage).
    """
    budget = "steps_per_stage" if attack == "gifd" else "iterations"

    def timed(n: int) -> tuple[float, float, int]:
        built = ATTACKS.build(attack, **{budget: n}, restarts=restarts, compile=compile, device=device, log_every=n,
                              **options)
        start = time.perf_counter()
        rec = built.reconstruct(obs, rng=torch.Generator().manual_seed(0))
        compile_seconds = float(rec.extras.get("compile_seconds", 0.0))
        return time.perf_counter() - start - compile_seconds, compile_seconds, rec.iterations // restarts

    warm = max(10, iterations // 4)
    _, compile_seconds, _ = timed(warm)  # the first run pays for compilation and warm-up; discarded
    short, _, short_steps = timed(warm)
    long, _, long_steps = timed(warm + iterations)
    return (long - short) / (long_steps - short_steps), compile_seconds


def victim(name: str, batch: int) -> tuple:
    """(model, observation, true gradient in parameter order, labels) of a 32 px RGB victim at batch ``batch``."""
    model = build_model(name, in_channels=3, num_classes=10, image_size=32, seed=0).eval()
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    labels = torch.arange(batch) % 10
    update = FedSGDClient(mode="eval").update(model, x, labels)
    obs = Observation(model=model, update=update, kind="gradient", image_shape=(3, 32, 32), num_classes=10,
                      normalization=((0.5,) * 3, (0.5,) * 3), batch_size=batch, labels=labels)
    return model, obs, [update[n] for n, _ in model.named_parameters()], labels


def breaching_loop(
    python: str, model, target, labels, shape, *, iterations: int, threads: int
) -> float | None:
    """Seconds per iteration of breaching 0.1.2's Inverting Gradients on the same victim and observed gradient
    (``target``, in ``model.parameters()`` order), run by ``breaching_speed.py`` under the interpreter ``python``
    (a scratch environment with breaching); None without an interpreter or when that run fails (its error is
    printed).

    The victim travels as a ``torch.fx`` GraphModule (unpickling needs torch alone, not fedinvert), the gradient by
    parameter name, with the labels, the input shape and speed.py's normalisation (0.5 per channel).
    """
    if not python:
        return None
    graph = torch.fx.symbolic_trace(model)
    for node in graph.graph.nodes:
        node.type = None  # string annotations (postponed evaluation) would not pickle
    graph.recompile()
    names = [name for name, _ in model.named_parameters()]
    victim = {
        "model": graph,
        "gradients": {name: t.detach() for name, t in zip(names, target, strict=True)},
        "labels": labels.detach().clone(),
        "shape": tuple(shape),
        "mean": (0.5,) * shape[1],
        "std": (0.5,) * shape[1],
    }
    with tempfile.TemporaryDirectory(prefix="fedinvert-breaching-") as folder:
        path = Path(folder) / "victim.pt"
        torch.save(victim, path)
        command = [
            python,
            str(BREACHING_SCRIPT),
            "--victim",
            str(path),
            "--iterations",
            str(iterations),
            "--threads",
            str(threads),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(f"breaching run failed ({done.returncode}): {done.stderr.strip()[-2000:]}", file=sys.stderr)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["ms_per_iteration"] / 1e3


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def ig_section(args: argparse.Namespace, grid: list[tuple[str, int]]) -> list[dict]:
    """Inverting Gradients, ms an iteration: bare loop, fedinvert eager and compiled, breaching."""
    print(f"\nInverting Gradients, 32x32x3, ms an iteration (marginal; {args.iterations} extra iterations,"
          f" resnet18 {args.resnet_iterations})")
    print(f"{'model':<10} {'B':>3} {'bare':>9} {'eager':>9} {'compiled':>9} {'compile s':>9} {'breaching':>9}"
          f" {'eager/bare':>10} {'compiled/bare':>13} {'breaching/bare':>14}")
    rows = []
    for name, batch in grid:
        n = args.resnet_iterations if name == "resnet18" else args.iterations
        model, obs, target, labels = victim(name, batch)
        bares, eagers, compileds, compile_times = [], [], [], []
        for _ in range(args.repeats):  # the loops interleaved; their medians (the first compiled run compiles)
            bares.append(bare_loop(model, target, labels, (batch, 3, 32, 32), iterations=n, device=args.device))
            eagers.append(fedinvert_loop(obs, iterations=n, compile=False, device=args.device)[0])
            step, seconds = fedinvert_loop(obs, iterations=n, compile=True, device=args.device)
            compileds.append(step)
            compile_times.append(seconds)
        compile_s = compile_times[0]
        bare, eager, compiled = (statistics.median(runs) for runs in (bares, eagers, compileds))
        theirs = None  # breaching's scratch environment is a CPU one
        if args.device == "cpu":
            theirs = breaching_loop(args.breaching_python, model, target, labels, (batch, 3, 32, 32), iterations=n,
                                    threads=args.threads)
        row = {"model": name, "batch": batch, "bare_ms": bare * 1e3, "eager_ms": eager * 1e3,
               "compiled_ms": compiled * 1e3, "compile_s": compile_s,
               "breaching_ms": None if theirs is None else theirs * 1e3,
               "eager_over_bare": eager / bare, "compiled_over_bare": compiled / bare,
               "breaching_over_bare": ratio(theirs, bare)}
        rows.append(row)
        print(f"{name:<10} {batch:>3} {fmt(row['bare_ms'], '9.2f')} {fmt(row['eager_ms'], '9.2f')}"
              f" {fmt(row['compiled_ms'], '9.2f')} {fmt(compile_s, '9.1f')} {fmt(row['breaching_ms'], '9.2f')}"
              f" {fmt(row['eager_over_bare'], '10.2f')} {fmt(row['compiled_over_bare'], '13.2f')}"
              f" {fmt(row['breaching_over_bare'], '14.2f')}", flush=True)
        if args.repeats > 1:
            row["bare_runs_ms"] = runs_ms(bares)
            row["eager_runs_ms"] = runs_ms(eagers)
            row["compiled_runs_ms"] = runs_ms(compileds)
            print(f"{'':<14} medians of {args.repeats} interleaved runs: bare {row['bare_runs_ms']},"
                  f" eager {row['eager_runs_ms']}, compiled {row['compiled_runs_ms']}", flush=True)
    return rows


def gifd_section(args: argparse.Namespace, grid: list[tuple[str, int]], prior) -> list[dict]:
    """GIFD on the face prior, ms an evaluation (one stage step): a plain GIFD loop (`bare_gifd_loop`), fedinvert
    eager and (with --gifd-compiled) compiled."""
    print(f"\nGIFD, prior face-dcgan (all stages), ms an evaluation (marginal; {args.gifd_steps} extra steps a stage)")
    print(f"{'model':<10} {'B':>3} {'bare':>9} {'eager':>9} {'compiled':>9} {'compile s':>9} {'eager/bare':>10}"
          f" {'compiled/bare':>13}")
    rows = []
    for name, batch in grid:
        model, obs, target, labels = victim(name, batch)
        n = max(2, args.gifd_steps // 10) if name == "resnet18" else args.gifd_steps
        bares, eagers = [], []
        for _ in range(args.repeats):  # interleaved, as the IG cells; their medians
            bares.append(bare_gifd_loop(prior.main, model, target, labels, (batch, 3, 32, 32), steps=n,
                                        device=args.device))
            eagers.append(fedinvert_loop(obs, iterations=n, compile=False, attack="gifd", prior=prior,
                                         device=args.device)[0])
        bare, eager = statistics.median(bares), statistics.median(eagers)
        compiled = compile_s = None
        if args.gifd_compiled:
            compiled, compile_s = fedinvert_loop(obs, iterations=n, compile=True, attack="gifd", prior=prior,
                                                 device=args.device)
        row = {"model": name, "batch": batch, "bare_ms": bare * 1e3, "eager_ms": eager * 1e3,
               "compiled_ms": None if compiled is None else compiled * 1e3, "compile_s": compile_s,
               "eager_over_bare": eager / bare, "compiled_over_bare": ratio(compiled, bare)}
        rows.append(row)
        print(f"{name:<10} {batch:>3} {fmt(row['bare_ms'], '9.2f')} {fmt(row['eager_ms'], '9.2f')}"
              f" {fmt(row['compiled_ms'], '9.2f')} {fmt(compile_s, '9.1f')} {fmt(row['eager_over_bare'], '10.2f')}"
              f" {fmt(row['compiled_over_bare'], '13.2f')}", flush=True)
        if args.repeats > 1:
            row["bare_runs_ms"] = runs_ms(bares)
            row["eager_runs_ms"] = runs_ms(eagers)
            print(f"{'':<14} medians of {args.repeats} interleaved runs: bare {row['bare_runs_ms']},"
                  f" eager {row['eager_runs_ms']}", flush=True)
    return rows


def restart_section(args: argparse.Namespace, victims: list[str], prior) -> list[dict]:
    """4 restarts against 1 (B = 1): the cost of a step of all restarts over the cost of one restart's step."""
    repeated = f" (medians of {args.repeats} interleaved runs; ratio: the runs' median)" if args.repeats > 1 else ""
    print(f"\nRestarts, B = 1: ms a step with {args.restarts} restarts and with 1, and their ratio{repeated}")
    print(f"{'attack':<22} {'model':<10} {'1 restart':>9} {f'{args.restarts} restarts':>10} {'ratio':>6}")
    cases = [("inverting_gradients", False, {}), ("inverting_gradients", True, {}), ("gifd", False, {"prior": prior})]
    if args.gifd_compiled:
        cases.append(("gifd", True, {"prior": prior}))
    rows = []
    for name in victims:
        _, obs, _, _ = victim(name, 1)
        for attack, compiled, options in cases:
            n = args.resnet_iterations if name == "resnet18" else args.iterations
            if attack == "gifd":
                n = max(2, args.gifd_steps // 10) if name == "resnet18" else args.gifd_steps
            ones, manys = [], []
            for _ in range(args.repeats):  # interleaved; the medians of each and of the runs' ratios
                ones.append(fedinvert_loop(obs, iterations=n, compile=compiled, attack=attack, device=args.device,
                                           **options)[0])
                manys.append(fedinvert_loop(obs, iterations=n, compile=compiled, attack=attack,
                                            restarts=args.restarts, device=args.device, **options)[0])
            one, many = statistics.median(ones), statistics.median(manys)
            ratios = [m / o for m, o in zip(manys, ones, strict=True)]
            label = f"{'IG' if attack == 'inverting_gradients' else 'GIFD'} {'compiled' if compiled else 'eager'}"
            row = {"attack": label, "model": name, "one_ms": one * 1e3, "many_ms": many * 1e3,
                   "restarts": args.restarts, "ratio": statistics.median(ratios)}
            rows.append(row)
            print(f"{label:<22} {name:<10} {one * 1e3:9.2f} {many * 1e3:10.2f} {row['ratio']:6.2f}", flush=True)
            if args.repeats > 1:
                row["ratio_runs"] = " ".join(f"{q:.2f}" for q in ratios)
                print(f"{'':<34} ratios of {args.repeats} interleaved runs: {row['ratio_runs']}", flush=True)
    return rows


def process_section(args: argparse.Namespace) -> None:
    """Whole processes: `process.py` (fedinvert attack against the plain script on LeNet-DLG), IG and GIFD."""
    here = Path(__file__).resolve().parent
    for attack in ("inverting_gradients", "gifd"):
        print(f"\nWhole process (benchmarks/process.py --attack {attack}):", flush=True)
        done = subprocess.run([sys.executable, str(here / "process.py"), "--attack", attack, "--threads",
                               str(args.threads), "--repeats", str(args.process_repeats)],
                              capture_output=True, text=True, check=False, cwd=here)
        print(done.stdout.rstrip() or done.stderr.strip()[-2000:], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="extra iterations of the marginal runs (200)")
    parser.add_argument("--resnet-iterations", type=int, default=20, help="the same for resnet18 (20)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="interleaved runs of the bare loop, fedinvert eager and compiled per IG cell (bare and"
                        " eager per GIFD cell, 1 and N restarts per restart cell); medians (1)")
    parser.add_argument("--gifd-steps", type=int, default=40, help="extra steps a stage of GIFD's runs (40)")
    parser.add_argument("--restarts", type=int, default=4, help="restarts of the restart section (4)")
    parser.add_argument("--victims", default="lenet-dlg,convnet,resnet18")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--sections", default="ig,gifd,restarts,process",
                        help="which tables: ig, gifd, restarts, process (the default), and batches")
    parser.add_argument("--gifd-compiled", action="store_true", help="also GIFD compiled (each stage compiles)")
    parser.add_argument("--process-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the process section runs on the CPU)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--csv", default="benchmarks/results/speed.csv", help="IG table; _gifd, _restarts beside")
    parser.add_argument(
        "--breaching-python",
        default=os.environ.get("FEDINVERT_BREACHING_PYTHON"),
        help="interpreter of a scratch environment with breaching 0.1.2 (default: the environment"
        " variable FEDINVERT_BREACHING_PYTHON); without one the breaching column reads n/a",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    victims = args.victims.split(",")
    grid = [(name, int(b)) for name in victims for b in args.batches.split(",")]
    sections = args.sections.split(",")
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"{where}, {args.threads} thread(s), torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    if not args.breaching_python:
        print(f"no breaching column (--breaching-python or FEDINVERT_BREACHING_PYTHON); install: {BREACHING_INSTALL}")
    csv = Path(args.csv)
    if "ig" in sections:
        print(f"wrote {write_csv(ig_section(args, grid), csv)}")
    prior = None
    if "gifd" in sections or "restarts" in sections:
        from fedinvert.priors import build_prior

        prior = build_prior("face-dcgan")
    if "gifd" in sections:
        print(f"wrote {write_csv(gifd_section(args, grid, prior), csv.with_name(csv.stem + '_gifd.csv'))}")
    if "restarts" in sections:
        rows = restart_section(args, victims, prior)
        print(f"wrote {write_csv(rows, csv.with_name(csv.stem + '_restarts.csv'))}")
    if "batches" in sections:  # a study's private batches in one batch (batched_batches.py)
        from batched_batches import table

        print("\nPrivate batches in one batch (benchmarks/batched_batches.py):")
        rows = table(victims, batches=args.restarts, compiled=True, device=args.device)
        print(f"wrote {write_csv(rows, csv.with_name(csv.stem + '_batches.csv'))}")
    if "process" in sections:
        process_section(args)


if __name__ == "__main__":
    main()
