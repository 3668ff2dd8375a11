"""What a defence costs the federation: the victim's test accuracy after federated training with and without it.

The measurement keeps the user's FL configuration and the defence's units: from the global weights the audit's
runs attack (the victim after ``model.checkpoint`` / ``model.pretrain_epochs``), ``rounds`` rounds of federated
training, each with ``clients`` clients. A client holds ``batch_size`` images drawn from the data set's *train*
split, computes its update with the configured protocol (FedSGD's gradient, or FedAvg's local epochs, batch size
and learning rate), and the configured defences transform it exactly as in the attacked round
(`fedinvert.defenses.federated_round`, secure aggregation summing its own group of clients). The server averages
the updates and applies them: the mean weight delta as it is (FedAvg), or a step of `FEDSGD_SERVER_LR` along the
mean gradient (FedSGD). Every condition draws the same clients' images in the same order (seed stream
``audit-utility``), so two conditions differ only by their defences.

Batch-norm statistics are not part of an update (DESIGN §12), so before testing they are re-estimated on
`CALIBRATION_IMAGES` train images (the recalibration a server does before it evaluates). The accuracy is top-1 on
the first `fedinvert.pretrain.TEST_IMAGES` test images; the difference of two conditions is paired over those
images, with its 95 % t-interval (it covers the test sample, not another training run's randomness).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedinvert.errors import ConfigError

log = logging.getLogger(__name__)

FEDSGD_SERVER_LR = 0.1
"""The server's SGD learning rate on the mean FedSGD gradient (FedAvg's mean delta is applied as it is)."""

CALIBRATION_IMAGES = 256
"""Train images whose batch statistics replace the batch-norm buffers before the test."""

STREAM = "audit-utility"


@dataclass(frozen=True)
class Utility:
    """The test accuracy of one condition after the measured training.

    Attributes:
        accuracy: top-1 test accuracy in [0, 1].
        correct: per test image, 1.0 when classified right (for paired differences).
        rounds, clients: the training measured.
        start_accuracy: the accuracy of the global weights before training.
        chance: 1 / classes.
    """

    accuracy: float
    correct: list[float]
    rounds: int
    clients: int
    start_accuracy: float
    chance: float

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "correct": self.correct, "rounds": self.rounds, "clients": self.clients,
                "start_accuracy": self.start_accuracy, "chance": self.chance}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Utility:
        return cls(**{k: data[k] for k in ("accuracy", "correct", "rounds", "clients", "start_accuracy", "chance")})


def measurable(cfg: dict[str, Any]) -> str | None:
    """None when the data set has the train and test splits the measurement needs, else why not."""
    from fedinvert.pretrain import type_splits

    splits = type_splits(cfg["dataset"]["name"])
    if "train" not in splits or "test" not in splits:
        return (f"dataset {cfg['dataset']['name']} has no train and test split to train and test the victim on;"
                " the accuracy cost is not measured")
    return None


def _predictions(model: nn.Module, inputs: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(inputs[i:i + 250]).argmax(dim=1) for i in range(0, len(inputs), 250)])


def _recalibrate(model: nn.Module, inputs: Tensor) -> None:
    """Batch-norm running statistics from ``inputs`` (a cumulative average), the weights untouched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i in range(0, len(inputs), 64):
            model(inputs[i:i + 64])
    model.train(was_training)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum


def measure(cfg: dict[str, Any], defense: dict[str, dict[str, Any]], *, rounds: int, clients: int,
            batch_size: int | None = None) -> Utility:
    """Train the run's victim for ``rounds`` federated rounds under ``defense`` and test it (module docstring).

    Args:
        cfg: a resolved run configuration of the audit (its data, victim, protocol and seed are used; its own
            ``defense`` is replaced by ``defense``).
        defense: the defences ``{name: params}`` every client applies.
        rounds: federated rounds (0: the global weights as they are).
        clients: clients per round (each with ``batch_size`` images; secure aggregation groups them).
        batch_size: images per client (default: the configuration's ``batch_size``).

    Raises:
        ConfigError: the data set has no train/test split, or the defences do not fit the victim.
    """
    from fedinvert.config import resolve_keywords
    from fedinvert.data import resolve_normalization
    from fedinvert.defenses import build_defenses, client_count, federated_round
    from fedinvert.pretrain import TEST_IMAGES, TrainingData
    from fedinvert.runner import PROTOCOLS, build_scenario
    from fedinvert.seeding import generator, numpy_rng

    reason = measurable(cfg)
    if reason is not None:
        raise ConfigError(reason)
    honest = json_copy(cfg)
    honest["defense"], honest["attack"] = {}, {"name": "inverting_gradients"}
    honest["threat"] = {**honest["threat"], "server": "honest"}
    scenario = build_scenario(honest)  # the global weights the attacked round starts from
    model = copy.deepcopy(scenario.observation.model).cpu()
    ds = cfg["dataset"]
    channels = scenario.observation.image_shape[0]
    data = TrainingData(dataset=ds["name"], root=ds.get("root"), image_size=cfg.get("image_size"),
                        channels=cfg.get("channels"), num_classes=cfg.get("num_classes"),
                        label_map=ds.get("label_map"),
                        normalization=resolve_normalization(cfg.get("normalization"), ds["name"], channels))
    source = data.open()
    seed = int(cfg["seed"])
    test_count = min(TEST_IMAGES, source.size(split="test"))
    test_x, test_y = data.batch(source, np.arange(test_count), "test")
    train_size = source.size(split="train")
    rng = numpy_rng(seed, STREAM)
    calib_x, _ = data.batch(source, np.sort(rng.choice(train_size, size=min(CALIBRATION_IMAGES, train_size),
                                                       replace=False)), "train")
    chance = 1.0 / scenario.observation.num_classes

    def accuracy() -> tuple[float, list[float]]:
        tested = copy.deepcopy(model)
        _recalibrate(tested, calib_x)
        tested.eval()
        hits = (_predictions(tested, test_x) == test_y).float()
        return float(hits.mean()), hits.tolist()

    start, _ = accuracy()
    proto = dict(cfg["protocol"])
    client_cls = PROTOCOLS[proto.pop("name")]
    client = client_cls(**resolve_keywords("protocol", client_cls.__name__, client_cls, proto))
    defenses = build_defenses(defense)
    group = client_count(defenses)
    size = int(batch_size or cfg["batch_size"])
    noise = generator(seed, STREAM)
    groups = max(1, clients // group)
    for _ in range(rounds):
        updates: list[dict[str, Tensor]] = []
        for _ in range(groups):
            batches = []
            for _ in range(group):
                x, y = data.batch(source, np.sort(rng.choice(train_size, size=size, replace=False)), "train")
                batches.append((x, y))
            updates.append(federated_round(client=client, model=model, batches=batches, defenses=defenses,
                                           rng=noise).update)
        step = {n: torch.stack([u[n] for u in updates]).mean(dim=0) for n in updates[0]}
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in step:
                    param.add_(step[name].to(param.dtype), alpha=-FEDSGD_SERVER_LR if client.kind == "gradient" else 1.0)
    final, correct = accuracy()
    return Utility(accuracy=final, correct=correct, rounds=rounds, clients=groups * group, start_accuracy=start,
                   chance=chance)


def json_copy(cfg: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(cfg))  # type: ignore[no-any-return]
