"""The server side of a Flower federation as fedinvert sees it: every round's model and every client's update,
saved as observations that `fedinvert attack observation=PATH` re-attacks offline.

`CapturingStrategy` wraps any strategy of Flower's Message API (``flwr.serverapp.strategy``): each round it
records the arrays and the train configuration it sends to each node, turns every reply into the FedAvg
weight delta θ_client − θ_sent of that node, and writes it as ``round-RRRR/node-N/observation.safetensors``
(the format of a run folder's observation) with ``capture.json`` indexing what was written. Everything else —
sampling, aggregation, evaluation — is the wrapped strategy's, unchanged: capturing never alters what the
federation computes, and a reply it cannot read is logged and skipped, never raised into the round.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor, nn

from fedinvert.errors import ConfigError
from fedinvert.models import build_model
from fedinvert.observation import LocalTraining, Observation
from fedinvert.runner import write_observation

log = logging.getLogger(__name__)

#: Where the local-training hyper-parameters are looked for, first in the reply's metrics, then in the train
#: configuration sent: Flower's examples use the hyphenated names, Python code the underscored ones.
LOCAL_KEYS: dict[str, tuple[str, ...]] = {
    "epochs": ("local-epochs", "local_epochs", "epochs"),
    "batch_size": ("batch-size", "batch_size", "local-batch-size", "local_batch_size"),
    "lr": ("lr", "learning-rate", "learning_rate"),
    "momentum": ("momentum",),
    "shuffle_seed": ("shuffle-seed", "shuffle_seed"),
}

INDEX = "capture.json"


def victim_model(victim: Mapping[str, Any], image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The fedinvert model named by ``victim`` (``{"name": ..., **options}``) for inputs of ``image_shape``."""
    spec = dict(victim)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"victim must be a mapping with a model 'name' (e.g. {{'name': 'lenet5'}}), got {victim!r}")
    channels, height, _ = image_shape
    return build_model(name, in_channels=channels, num_classes=num_classes, image_size=height, **spec)


def named_state(arrays: ArrayRecord | Mapping[str, Tensor], template: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``arrays`` as a state dict with ``template``'s names.

    Flower code that sends ``ArrayRecord(model.state_dict())`` keeps the names; code that sends a list of NumPy
    arrays (``ArrayRecord(numpy_ndarrays=[...])``) numbers them, and is matched to the template by order.

    Raises:
        ValueError: neither the names nor the order and shapes fit the template.
    """
    state = arrays.to_torch_state_dict() if isinstance(arrays, ArrayRecord) else dict(arrays)
    if set(state) == set(template):
        named = state
    elif len(state) == len(template):
        named = dict(zip(template, state.values(), strict=True))
    else:
        raise ValueError(f"{len(state)} arrays for a model with {len(template)} state entries")
    for name, value in template.items():
        got = named[name]
        if tuple(got.shape) != tuple(value.shape):
            raise ValueError(f"array {name!r} has shape {tuple(got.shape)}, the victim's has {tuple(value.shape)}")
    return {name: torch.as_tensor(named[name]).to(template[name].dtype).clone() for name in template}


def local_training(metrics: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[LocalTraining | None, list[str]]:
    """The `LocalTraining` the reply's ``metrics`` or the sent ``config`` report, and the fields they reported.

    None when epochs, batch size or learning rate is missing: an attacker then guesses them (weak simulation).
    """
    found: dict[str, Any] = {}
    for field, keys in LOCAL_KEYS.items():
        for source in (metrics, config):
            key = next((k for k in keys if k in source), None)
            if key is not None:
                found[field] = source[key]
                break
    reported = sorted(found)
    if not {"epochs", "batch_size", "lr"} <= set(found):
        return None, reported
    try:
        local = LocalTraining(
            epochs=int(found["epochs"]), batch_size=int(found["batch_size"]), lr=float(found["lr"]),
            momentum=float(found.get("momentum", 0.0)),
            shuffle_seed=None if found.get("shuffle_seed") is None else int(found["shuffle_seed"]),
        )
    except (TypeError, ValueError):
        return None, reported
    if local.epochs < 1 or local.batch_size < 1 or not math.isfinite(local.lr) or local.lr <= 0:
        return None, reported
    return local, reported


class CapturingStrategy(Strategy):
    """Wraps a Flower strategy and saves every client's update of every round as a fedinvert observation.

    The clients must train a model that fedinvert can rebuild: ``victim`` names it as the registry does
    (``{"name": "lenet5"}``, ``{"name": "convnet", "width": 0.5}``; the same spec `fedinvert verify-model`
    takes), so that ``fedinvert attack observation=round-0001/node-3 attack=inverting_gradients ...`` attacks
    the saved update offline. Arrays are matched to the victim's state by name, or by order for clients that
    send NumPy lists.

    Args:
        strategy: the strategy that runs the federation (``flwr.serverapp.strategy.FedAvg`` or any other).
        out: the capture folder; created, and refused when it already holds files (unless ``overwrite``).
        victim: the victim's registry name and options.
        image_shape: (C, H, W) of the clients' inputs.
        num_classes: the label space.
        normalization: per-channel (mean, std) the clients apply to [0, 1] images ((0.5,), (0.5,) per channel
            when None).
        data: the data-set facts of the clients' images for the no-leak reference of a re-attack
            (``{"dataset": "fashion-mnist", "split": "train", "image_size": 28, "channels": 1}``), or None.
        train_mode: whether the clients train in train mode (BatchNorm batch statistics); recorded in the
            observation. Flower clients usually call ``model.train()``.
        overwrite: allow a non-empty ``out``; the capture then replaces the round folders it writes.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        out: str | Path,
        victim: Mapping[str, Any],
        image_shape: tuple[int, int, int],
        num_classes: int,
        normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        data: Mapping[str, Any] | None = None,
        train_mode: bool = True,
        overwrite: bool = False,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"strategy must be a flwr.serverapp.strategy.Strategy, got {type(strategy).__name__}")
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape!r}")
        self.strategy = strategy
        self.image_shape: tuple[int, int, int] = (shape[0], shape[1], shape[2])
        self.num_classes = int(num_classes)
        channels = self.image_shape[0]
        self.normalization = normalization or ((0.5,) * channels, (0.5,) * channels)
        self.victim = dict(victim)
        self.template = victim_model(self.victim, self.image_shape, self.num_classes)
        self.data = None if data is None else {"indices": [], "seed": 0, "root": None, **dict(data)}
        self.train_mode = bool(train_mode)
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"capture folder {self.out} exists and is not a folder")
        if self.out.is_dir() and any(self.out.iterdir()) and not overwrite:
            raise ConfigError(f"capture folder {self.out} is not empty; choose another or pass overwrite=True")
        self.out.mkdir(parents=True, exist_ok=True)
        if not os.access(self.out, os.W_OK):
            raise ConfigError(f"capture folder {self.out} is not writable")
        self.arrays_key = str(getattr(strategy, "arrayrecord_key", "arrays"))
        self.config_key = str(getattr(strategy, "configrecord_key", "config"))
        self.examples_key = str(getattr(strategy, "weighted_by_key", "num-examples"))
        self._sent: dict[int, tuple[dict[str, Tensor], dict[str, Any]]] = {}
        self.index: list[dict[str, Any]] = []

    # -- the wrapped strategy's API ----------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages, each node's arrays and config recorded before they go out."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sent = {}
        template = self.template.state_dict()
        for message in messages:
            content = message.content
            try:
                sent = named_state(content.array_records[self.arrays_key], template)
            except (KeyError, TypeError, ValueError) as err:
                log.warning("round %d: not capturing node %s: its train message has no usable arrays (%s)",
                            server_round, message.metadata.dst_node_id, err)
                continue
            sent_config = dict(content[self.config_key]) if self.config_key in content.config_records else {}
            self._sent[int(message.metadata.dst_node_id)] = (sent, sent_config)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Save each reply's update as an observation, then let the wrapped strategy aggregate them all."""
        replies = list(replies)
        for reply in replies:
            try:
                self._capture(server_round, reply)
            except (KeyError, TypeError, ValueError, RuntimeError, OSError) as err:
                log.warning("round %d: could not capture node %s's reply: %s", server_round,
                            reply.metadata.src_node_id, err)
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.info("fedinvert: capturing every client update into %s", self.out)
        self.strategy.summary()

    def __getattr__(self, name: str) -> Any:  # the wrapped strategy's settings (weighted_by_key, ...)
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    # -- capture ---------------------------------------------------------------------------------
    def _capture(self, server_round: int, reply: Message) -> None:
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            self._record(server_round, node, {"status": "error", "reason": reply.error.reason})
            return
        if node not in self._sent:
            raise ValueError("no train message to this node was recorded")
        sent, config = self._sent[node]
        after = named_state(reply.content.array_records[self.arrays_key], sent)
        metrics: dict[str, Any] = {}
        for record in reply.content.metric_records.values():
            metrics.update(dict(record))
        local, reported = local_training(metrics, config)
        examples = metrics.get(self.examples_key)
        batch_size = int(examples) if isinstance(examples, int | float) and int(examples) >= 1 else None

        model = victim_model(self.victim, self.image_shape, self.num_classes)
        model.load_state_dict(sent)
        model.train(self.train_mode)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        update = {n: after[n] - sent[n] for n in trainable}
        obs = Observation(
            model=model, update=update, kind="weight_delta", image_shape=self.image_shape,
            num_classes=self.num_classes, normalization=self.normalization, batch_size=batch_size,
            local_training=local,
        )
        folder = self.out / f"round-{server_round:04d}" / f"node-{node}"
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / "observation.safetensors.partial"
        write_observation(partial, obs, victim=self.victim, data=self.data)
        os.replace(partial, folder / "observation.safetensors")  # a reader never sees half a file
        self._record(server_round, node, {
            "status": "captured", "path": str(folder.relative_to(self.out)), "num_examples": batch_size,
            "local_training": None if local is None else asdict(local), "reported": reported,
            "update_norm": float(torch.stack([u.double().square().sum() for u in update.values()]).sum().sqrt()),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
        })

    def _record(self, server_round: int, node: int, entry: dict[str, Any]) -> None:
        self.index.append({"round": server_round, "node": node, **entry})
        partial = self.out / (INDEX + ".partial")
        partial.write_text(json.dumps({"victim": self.victim, "image_shape": list(self.image_shape),
                                       "num_classes": self.num_classes, "captures": self.index}, indent=1))
        os.replace(partial, self.out / INDEX)


def read_capture(out: str | Path) -> list[dict[str, Any]]:
    """The entries of a capture folder's ``capture.json`` (round, node, status, path, ...)."""
    path = Path(out) / INDEX
    if not path.is_file():
        raise ConfigError(f"{out} is not a capture folder: it has no {INDEX}")
    try:
        return list(json.loads(path.read_text())["captures"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is not a fedinvert capture index ({err})") from None


def attach_private(
    folder: str | Path, images: Tensor, labels: Tensor | None = None, *, indices: list[int] | None = None
) -> None:
    """Give a captured observation its private batch, for scoring a re-attack (an audit that owns both sides).

    Writes ``tensors.safetensors`` beside the observation, as a run folder holds it, so that
    ``fedinvert attack observation=FOLDER`` matches and scores against ``images``; ``indices`` (the images'
    positions in the capture's data set) keep them out of the re-identification distractors.

    Args:
        folder: a capture's ``round-RRRR/node-N`` folder.
        images: (B, C, H, W) in [0, 1], the client's training images of that round.
        labels: their (B,) labels, or None.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(folder) / "observation.safetensors"
    if not path.is_file():
        raise ConfigError(f"{folder} holds no observation.safetensors")
    if images.dim() != 4 or not images.is_floating_point() or float(images.min()) < 0 or float(images.max()) > 1:
        raise ConfigError(f"images must be (B, C, H, W) floating point in [0, 1], got {tuple(images.shape)}")
    tensors = {"private": images.detach().float().cpu().contiguous()}
    if labels is not None:
        tensors["labels"] = labels.detach().long().cpu().contiguous()
    if indices is not None:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["fedinvert"])
            stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
        if meta.get("data") is not None:
            meta["data"]["indices"] = [int(i) for i in indices]
            partial = path.with_name(path.name + ".partial")
            save_file(stored, str(partial), metadata={"fedinvert": json.dumps(meta)})
            os.replace(partial, path)
    save_file(tensors, str(Path(folder) / "tensors.safetensors"))
