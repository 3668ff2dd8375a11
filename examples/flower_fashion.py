"""Attack a real Flower federation while it trains, and let its clients defend themselves.

Three Flower clients hold disjoint Fashion-MNIST partitions and train a LeNet with FedAvg (Flower's own
``flwr.serverapp.strategy.FedAvg``, Message API). Two federations run in this process (`fedinvert.flower.run_local`;
``--ray`` runs the first through Flower's Ray simulation engine instead):

1. An honest-but-curious server wraps its strategy in `fedinvert.flower.CapturingStrategy`: every client's
   update of every round is saved as a fedinvert observation, and fedinvert's Inverting Gradients reconstructs
   one client's round-1 images from it — the same as ``fedinvert attack observation=OUT/round-0001/node-1001``.
2. A malicious server ships an imprinted model (Robbing the Fed's binned block in front of the LeNet). Each
   client runs `fedinvert.flower.verify_mod` against the architecture it agreed to and refuses to train on it:
   the server receives errors only, and nothing leaks.

    python examples/flower_fashion.py --out runs/flower
    python examples/flower_fashion.py --out runs/flower --ray        # Flower's simulation engine (extra [flower-sim])

Needs ``pip install 'fedinvert[flower]'`` and Fashion-MNIST (``make data``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # before flwr is imported

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedinvert.errors import FedinvertError
from fedinvert.flower import CapturingStrategy, attach_private, read_capture, run_local, verify_mod
from fedinvert.models import build_model

DATASET = "fashion-mnist"
SPLIT = "train"
IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
VICTIM = {"name": "lenet-dlg"}
NORMALIZATION = ((0.5,), (0.5,))
LOCAL = {"local-epochs": 1, "batch-size": 4, "lr": 0.01}

ModelFn = Callable[[], nn.Module]


def partitions(clients: int, images: int, *, seed: int = 0) -> list[tuple[list[int], Any]]:
    """Disjoint random partitions of Fashion-MNIST's train split: (indices, ImageSet) per client."""
    from fedinvert.data import FashionMNIST

    data = FashionMNIST()
    order = torch.randperm(data.size(split=SPLIT), generator=torch.Generator().manual_seed(seed))
    parts = []
    for c in range(clients):
        indices = [int(i) for i in order[c * images : (c + 1) * images]]
        parts.append((indices, data.take(indices, split=SPLIT)))
    return parts


def honest_model() -> nn.Module:
    return build_model(VICTIM["name"], in_channels=IMAGE_SHAPE[0], num_classes=NUM_CLASSES, image_size=IMAGE_SHAPE[1])


def client_app(parts: Sequence[tuple[list[int], Any]], model_fn: ModelFn, *, mods: Sequence[Any] = ()) -> ClientApp:
    """The clients' ClientApp: load the arrays into ``model_fn()`` (the model code that came with the app), run
    the configured local epochs of SGD on the node's partition, send the weights back."""
    app = ClientApp(mods=list(mods))
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in NORMALIZATION)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        _, part = parts[int(context.node_config["partition-id"])]
        model = model_fn()
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        config = message.content["config"]
        optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]))
        inputs, labels = (part.images - mean) / std, part.labels
        model.train()
        size = int(config["batch-size"])
        for _ in range(int(config["local-epochs"])):
            for start in range(0, len(inputs), size):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(inputs[start : start + size]), labels[start : start + size])
                loss.backward()
                optimizer.step()
        # partition-id lets the auditor of this example pair a captured update with its partition
        metrics = MetricRecord({"num-examples": len(inputs), "train-loss": float(loss.detach()),
                                "partition-id": int(context.node_config["partition-id"])})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=message)

    return app


def federate(
    out: Path, parts: Sequence[tuple[list[int], Any]], *, rounds: int, model_fn: ModelFn = honest_model,
    mods: Sequence[Any] = (), ray: bool = False, seed: int = 0, local: dict[str, Any] | None = None,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
) -> Any:
    """One FedAvg federation whose server captures every update into ``out``; Flower's Result.

    ``local`` replaces the clients' train configuration (`LOCAL`); ``evaluate_fn(round, arrays)`` is Flower's
    server-side evaluation of the global model after each round."""
    train_config = ConfigRecord(dict(local or LOCAL))
    torch.manual_seed(seed)
    strategy = CapturingStrategy(
        FedAvg(fraction_evaluate=0.0, min_train_nodes=len(parts), min_available_nodes=len(parts)),
        out=out, victim=VICTIM, image_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, normalization=NORMALIZATION,
        data={"dataset": DATASET, "split": SPLIT, "image_size": IMAGE_SHAPE[1], "channels": IMAGE_SHAPE[0]},
    )
    app = client_app(parts, model_fn, mods=mods)
    initial = ArrayRecord(model_fn().state_dict())
    if ray:
        return simulate_with_ray(strategy, app, nodes=len(parts), initial=initial, rounds=rounds)
    return run_local(strategy, app, num_nodes=len(parts), initial_arrays=initial, num_rounds=rounds,
                     train_config=train_config, evaluate_fn=evaluate_fn)


def simulate_with_ray(strategy: CapturingStrategy, app: ClientApp, *, nodes: int, initial: ArrayRecord,
                      rounds: int) -> None:
    """The same federation through Flower's simulation engine (Ray backend, one CPU per node)."""
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, train_config=ConfigRecord(LOCAL))

    run_simulation(server_app=server, client_app=app, num_supernodes=nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})


def attack_capture(folder: Path, *, iterations: int, seed: int = 0, extra: Sequence[str] = ()) -> dict[str, Any]:
    """``fedinvert attack observation=FOLDER attack=inverting_gradients ...``: its metrics."""
    from fedinvert.config import resolve_config
    from fedinvert.runner import run

    cfg = resolve_config([f"observation={folder}", "attack=inverting_gradients", f"attack.iterations={iterations}",
                          "attack.restarts=1", "attack.compile=false", "device=cpu", "progress=false", f"seed={seed}",
                          "metrics.st_lpips=false", *extra])
    return run(cfg, write=False).metrics


def imprinted_model_fn(public: torch.Tensor) -> ModelFn:
    """A malicious operator's model code: Robbing the Fed's imprint block in front of the LeNet."""
    from fedinvert.attacks.analytic.imprint import Imprint
    from fedinvert.attacks.base import ServerContext

    context = ServerContext(image_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, normalization=NORMALIZATION,
                            public=public, batch_size=LOCAL["batch-size"])
    attack = Imprint(bins=64, scale=100.0)  # a block this large survives float32 weight deltas (benchmarks/imprint.py)
    return lambda: attack.modify_model(honest_model(), context)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/flower"), help="capture folders go here")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--images", type=int, default=4, help="images per client partition")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=1000, help="Inverting Gradients iterations")
    parser.add_argument("--ray", action="store_true", help="run the honest federation on Flower's Ray engine")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        for name in ("honest", "malicious"):
            if (args.out / name).exists():
                raise FedinvertError(f"{args.out / name} exists; choose another --out")
        parts = partitions(args.clients, args.images)
        federate(args.out / "honest", parts, rounds=args.rounds, ray=args.ray)
        captured = [e for e in read_capture(args.out / "honest") if e["status"] == "captured"]
        print(f"honest server: captured {len(captured)} updates over {args.rounds} rounds into {args.out / 'honest'}")
        first = next((e for e in captured if e["round"] == 1), None)
        if first is None:
            print("error: no client update of round 1 was captured (see the clients' errors above)", file=sys.stderr)
            return 1
        folder = args.out / "honest" / first["path"]
        indices, part = parts[int(first["metrics"]["partition-id"])]
        attach_private(folder, part.images, part.labels, indices=indices)  # the auditor owns both sides
        metrics = attack_capture(folder, iterations=args.iterations)
        print(f"  node {first['node']}, round 1: Inverting Gradients PSNR {metrics['psnr']:.2f} dB,"
              f" reference {metrics['reference']['psnr']:.2f} dB, leakage {metrics['leakage_db']:+.2f} dB,"
              f" re-identified {metrics['reid_top1']:.2f}")

        from fedinvert.data import FashionMNIST

        public = FashionMNIST().take(range(2000), split="test").images
        guard = verify_mod({"name": VICTIM["name"], "in_channels": 1, "num_classes": NUM_CLASSES, "image_size": 28})
        federate(args.out / "malicious", parts, rounds=1, model_fn=imprinted_model_fn(public), mods=[guard])
        entries = read_capture(args.out / "malicious")
        refused = [e for e in entries if e["status"] == "error"]
        print(f"malicious (imprint) server: {len(refused)} of {len(entries)} clients refused, "
              f"{sum(e['status'] == 'captured' for e in entries)} updates captured")
        for e in refused[:1]:
            print(f"  node {e['node']}: {e['reason']}")
    except FedinvertError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
