"""Build a run from a resolved config, execute it, and write the run folder (DESIGN §9, §12).

Client side (data, victim, protocol, defences) produces an `Observation`; the attack sees only that;
evaluation alone sees the private batch.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn

import fedinvert
from fedinvert import determinism
from fedinvert import metrics as metrics_mod
from fedinvert.attacks import ATTACKS, Attack
from fedinvert.attacks.base import ServerContext, resolve_device
from fedinvert.config import resolve_keywords
from fedinvert.config.schema import DEFAULTS as _CONFIG_DEFAULTS
from fedinvert.config.validation import VICTIM_TRAINING, validate_config
from fedinvert.data import check_normalization, load_batch, public_images, resolve_normalization
from fedinvert.data.base import DATASETS
from fedinvert.data.loader import build_dataset
from fedinvert.defenses import build_defenses, client_count, federated_round
from fedinvert.errors import CheckpointError, ConfigError, FedinvertError, ObservationError
from fedinvert.fl import GUESSED_LOCAL_TRAINING, FedAvgClient, FedSGDClient, split_clients
from fedinvert.memory import check_memory, parameter_count
from fedinvert.models import build_model
from fedinvert.observation import (
    Capability,
    DefenseSpec,
    LocalTraining,
    Observation,
    Reconstruction,
    StageResult,
)
from fedinvert.pretrain import TrainingData, prepare_victim, read_safetensors
from fedinvert.report import leakage_caption, save_grid, save_loss_plot
from fedinvert.run_folder import OutputTarget, deferred_sigint, json_text
from fedinvert.run_folder import prepare as prepare_output
from fedinvert.seeding import generator, stream_seed

log = logging.getLogger(__name__)

METRICS_DEFAULTS: dict[str, Any] = _CONFIG_DEFAULTS["metrics"]
"""The ``metrics`` config mapping's defaults, for callers of `evaluate_run` without a config."""

PROTOCOLS: dict[str, type[FedSGDClient] | type[FedAvgClient]] = {"fedsgd": FedSGDClient, "fedavg": FedAvgClient}


@dataclass
class Scenario:
    """The client side of a run: what the attacker observes and the private batch kept for evaluation."""

    observation: Observation
    private: Tensor | None  # (B, C, H, W) in [0, 1]
    private_labels: Tensor | None
    granted: frozenset[Capability] = frozenset()
    info: dict[str, Any] = field(default_factory=dict)
    sent_model: dict[str, Tensor] | None = None  # the state dict a malicious server sent (sent_model.safetensors)


@dataclass
class RunResult:
    config: dict[str, Any]
    metrics: dict[str, Any]
    reconstruction: Reconstruction
    scenario: Scenario
    out: Path | None = None
    run_info: dict[str, Any] = field(default_factory=dict)


# -- client side -------------------------------------------------------------------------------------
def _group_kwargs(cfg: dict[str, Any], group: str, factory: Any, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    section = dict(cfg.get(group) or {})
    name = section.pop("name", None)
    return resolve_keywords(group, str(name), factory, section, exclude=exclude)


def apply_label_map(label_map: Any, labels: torch.Tensor, classes: int) -> tuple[torch.Tensor, int]:
    """The FL task's labels under ``dataset.label_map`` (entry c is the FL label of the data set's class c):
    a reordering of the classes or a grouping into fewer. Returns the labels and the FL class count."""
    if (
        not isinstance(label_map, list)
        or len(label_map) != classes
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in label_map)
    ):
        raise ConfigError(
            f"dataset.label_map must list one FL label (an integer ≥ 0) for each of the data set's {classes}"
            f" classes, e.g. [{', '.join(str((c + 1) % classes) for c in range(min(classes, 4)))}, ...];"
            f" got {label_map!r}"
        )
    return torch.tensor(label_map, dtype=labels.dtype)[labels], max(label_map) + 1


def build_scenario(cfg: dict[str, Any], *, attack: Attack | None = None) -> Scenario:
    """Data → victim → protocol → defences → Observation, following the config and threat model.

    An ``attack`` that modifies the model (``Capability.MALICIOUS_MODEL``, allowed by ``threat.server=malicious``
    only) replaces the victim by `Attack.modify_model` before the client computes its update; the scenario
    records what was sent (``sent_model``, and its architecture in ``info["sent_model"]``).

    With ``secure_aggregation`` among the defences, ``batch_size`` is each client's B: K·B images with distinct
    indices are drawn, client k trains on the k-th B, and the private batch kept for evaluation (and the
    observation's batch size) is all K·B. A FedAvg client without ``protocol.shuffle_seed`` shuffles with a
    seed from the run's ``client`` stream; defence noise draws from the ``defense`` stream.

    The victim gets its weights from ``model.checkpoint`` and/or ``model.pretrain_epochs`` of training on the
    data set's train split (`fedinvert.pretrain`, cached) before a malicious server modifies it and before the
    client's round; ``info["victim_weights"]`` records how, and the test accuracy reached.
    """
    cfg = validate_config(cfg)  # every key typed and in range before int() or any data is read
    if cfg.get("observation"):
        return load_observation(cfg["observation"], cfg)
    seed = int(cfg["seed"])
    ds_cfg = dict(cfg["dataset"])
    ds_name = ds_cfg.pop("name")
    DATASETS.get(ds_name)
    batch_size = int(cfg["batch_size"])
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    image_size = cfg.get("image_size")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ConfigError(f"image_size must be an integer ≥ 8, got {image_size!r}")
    indices = ds_cfg.pop("indices", None)
    if indices is not None and not isinstance(indices, list):
        indices = [indices]
    label_map = ds_cfg.pop("label_map", None)
    known = {"batch", "split", "unique_labels", "shared_labels", "root"}
    extra = sorted(set(ds_cfg) - known)
    if extra:
        raise ConfigError(
            f"unknown key dataset.{extra[0]}; valid keys: indices, label_map, {', '.join(sorted(known))}"
        )
    check_normalization(cfg.get("normalization"))  # the channel count is checked once the images are read
    defenses = build_defenses(dict(cfg.get("defense") or {}))
    clients = client_count(defenses)
    total = batch_size * clients
    if clients > 1 and indices is not None and len(indices) != total:
        raise ConfigError(
            f"dataset.indices must hold batch_size × defense.secure_aggregation.clients = {batch_size} × {clients}"
            f" = {total} indices (one batch per client), got {len(indices)}"
        )
    if image_size is not None:  # before the batch is allocated (the data set may not know its channels yet)
        check_memory(images=total, channels=int(cfg.get("channels") or 3), height=image_size, width=image_size)
    batch = load_batch(
        ds_name,
        batch_size=total,
        indices=indices,
        split=ds_cfg.get("split"),
        image_size=image_size,
        channels=cfg.get("channels"),
        num_classes=cfg.get("num_classes"),
        seed=seed,
        unique_labels=bool(ds_cfg.get("unique_labels", False)),
        shared_labels=ds_cfg.get("shared_labels"),
        batch=ds_cfg.get("batch"),
        root=ds_cfg.get("root"),
    )
    images, labels = batch.images, batch.labels
    channels, height, width = images.shape[1:]
    num_classes = int(cfg.get("num_classes") or batch.num_classes)
    if label_map is not None:
        labels, mapped_classes = apply_label_map(label_map, labels, batch.num_classes)
        num_classes = int(cfg.get("num_classes") or mapped_classes)
    if int(labels.max()) >= num_classes:
        raise ConfigError(f"num_classes={num_classes} is too small for label {int(labels.max())} of the batch")
    normalization = resolve_normalization(cfg.get("normalization"), ds_name, channels)

    model_cfg = dict(cfg["model"])
    model_name = model_cfg.pop("name")
    training = {key: model_cfg.pop(key) for key in VICTIM_TRAINING if key in model_cfg}  # not model keywords
    shape = {"in_channels": channels, "num_classes": num_classes, "image_size": height}
    parameters = parameter_count(model_name, **shape, seed=seed, **model_cfg)  # counted without allocating
    check_memory(images=total, channels=channels, height=height, width=width, parameters=parameters)
    model = build_model(model_name, in_channels=channels, num_classes=num_classes, image_size=height, seed=seed, **model_cfg)
    victim_weights = prepare_victim(
        model, name=model_name, options=model_cfg, num_classes=num_classes, seed=seed,
        data=TrainingData(dataset=ds_name, root=ds_cfg.get("root"), image_size=image_size, channels=cfg.get("channels"),
                          num_classes=cfg.get("num_classes"), label_map=label_map, normalization=normalization),
        device=resolve_device(cfg.get("device", "auto")), checkpoint=training.get("checkpoint"),
        epochs=int(training.get("pretrain_epochs", 0)), images=training.get("pretrain_images"),
        progress=bool(cfg.get("progress")),
    )
    threat = cfg["threat"]
    data_info = {
        "dataset": ds_name,
        "split": batch.split,
        "indices": batch.indices,
        "image_size": int(height),
        "channels": int(channels),
        "root": None if ds_cfg.get("root") is None else str(ds_cfg["root"]),
        "seed": seed,
    }
    sent_state: dict[str, Tensor] | None = None
    sent_info: dict[str, Any] | None = None
    if attack is not None and attack.modifies_model:
        if threat["server"] != "malicious":
            raise ConfigError(
                f"attack {type(attack).__name__} changes the model the server sends; it needs threat.server=malicious"
            )
        context = ServerContext(
            image_shape=(channels, height, width), num_classes=num_classes, normalization=normalization,
            public=public_images(ds_name, **_pool_options(data_info), count=SERVER_PUBLIC_IMAGES),
            batch_size=batch_size,
        )
        model = attack.modify_model(model, context)
        sent_state = {k: v.detach().clone().contiguous().cpu() for k, v in model.state_dict().items()}
        sent_info = sent_model_info(model)

    proto_cfg = dict(cfg["protocol"])
    proto_name = proto_cfg.pop("name")
    if proto_name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{proto_name}'; known: {', '.join(sorted(PROTOCOLS))}")
    client_cls = PROTOCOLS[proto_name]
    proto_kwargs = resolve_keywords("protocol", proto_name, client_cls, proto_cfg)
    if "shuffle_seed" in proto_kwargs and proto_kwargs["shuffle_seed"] is None:
        proto_kwargs["shuffle_seed"] = stream_seed(seed, "client") % 2**31
    client = client_cls(**proto_kwargs)
    mean = torch.tensor(normalization[0]).view(1, -1, 1, 1)
    std = torch.tensor(normalization[1]).view(1, -1, 1, 1)
    inputs = (images - mean) / std
    result = federated_round(
        client=client,
        model=model,
        batches=split_clients(inputs, labels, clients),
        defenses=defenses,
        rng=generator(seed, "defense"),
    )

    local: LocalTraining | None = None
    if isinstance(client, FedAvgClient):
        local = {"known": client.local_training(), "guessed": GUESSED_LOCAL_TRAINING, "unknown": None}[
            threat["local_hparams"]
        ]
    specs = tuple(d.spec() for d in defenses)
    obs = Observation(
        model=model,
        update=result.update,
        kind=client.kind,  # type: ignore[arg-type]
        image_shape=(channels, height, width),
        num_classes=num_classes,
        normalization=normalization,
        batch_size=total if threat["batch_size"] == "known" else None,
        labels=labels.clone() if threat["labels"] == "known" else None,
        local_training=local,
        defenses=specs if threat["defenses"] == "known" else (),
    )
    granted = {Capability.PRIOR} if cfg.get("prior") else set()
    if threat["server"] == "malicious":
        granted.add(Capability.MALICIOUS_MODEL)
    info: dict[str, Any] = {
        "dataset": ds_name,
        "indices": batch.indices,
        "split": batch.split,
        "model": model_name,
        "protocol": {"name": proto_name, **proto_kwargs},
        "defenses": [{"name": s.name, "params": s.params} for s in specs],
        "clients": clients,
        "normalization": {"mean": list(normalization[0]), "std": list(normalization[1])},
        **result.info,
        # what evaluation needs to draw the no-leak reference's public images and the re-identification
        # distractors; stored in observation.safetensors too, so a re-attack can score against them
        "data": data_info,
    }
    if sent_info is not None:
        info["sent_model"] = sent_info
    info["victim"] = {"name": model_name, **model_cfg}  # the architecture observation.safetensors records
    if victim_weights is not None:
        info["victim_weights"] = victim_weights
    return Scenario(observation=obs, private=images, private_labels=labels, granted=frozenset(granted), info=info,
                    sent_model=sent_state)


SERVER_PUBLIC_IMAGES = 10_000
"""How many public images (the data set's other split) a malicious server may use to build its model: Robbing
the Fed's 1000 bins need their quantiles from many more than 1000 images (benchmarks/imprint.py)."""


def sent_model_info(model: nn.Module) -> dict[str, Any]:
    """The architecture of a model a malicious server sent, for run.json: its class, module tree (``repr``)
    and every state-dict entry's shape, as saved in ``sent_model.safetensors``."""
    return {
        "file": "sent_model.safetensors",
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "architecture": repr(model).splitlines(),
        "state": {k: list(v.shape) for k, v in model.state_dict().items()},
    }


# -- observation files ---------------------------------------------------------------------------------
def save_observation(path: Path, scenario: Scenario, cfg: dict[str, Any]) -> None:
    """What the attacker saw, as safetensors: update, model weights and buffers, granted labels, metadata."""
    # the victim's architecture: the config's model section without the keys that gave it its weights (which
    # the observation holds); a re-attacked observation keeps its own victim
    victim = {k: v for k, v in cfg["model"].items() if k not in VICTIM_TRAINING}
    write_observation(path, scenario.observation, victim=scenario.info.get("victim", victim),
                      data=scenario.info.get("data"))


def write_observation(path: Path, obs: Observation, *, victim: dict[str, Any], data: dict[str, Any] | None) -> None:
    """``obs`` as an ``observation.safetensors`` file that `load_observation` reads back.

    Args:
        victim: the victim's registry name and options (``{"name": "lenet5", ...}``): how a re-attack rebuilds
            ``obs.model`` before it loads the saved weights.
        data: data-set facts for the no-leak reference (``dataset``, ``split``, ``indices``, ``image_size``,
            ``channels``, ...), or None when they are unknown.
    """
    tensors = {f"update.{n}": t.detach().contiguous().cpu() for n, t in obs.update.items()}
    tensors.update({f"model.{n}": t.detach().contiguous().cpu() for n, t in obs.model.state_dict().items()})
    if obs.labels is not None:
        tensors["labels"] = obs.labels.cpu()
    meta = {
        "model": victim,
        "model_training": obs.model.training,
        "kind": obs.kind,
        "image_shape": list(obs.image_shape),
        "num_classes": obs.num_classes,
        "normalization": [list(obs.normalization[0]), list(obs.normalization[1])],
        "batch_size": obs.batch_size,
        "loss": obs.loss,
        "local_training": asdict(obs.local_training) if obs.local_training is not None else None,
        "defenses": [{"name": d.name, "params": d.params} for d in obs.defenses],
        "data": data,
    }
    save_file(tensors, str(path), metadata={"fedinvert": json.dumps(meta)})


#: The keys that set up the client side; a saved observation has fixed all of them (``threat.labels`` aside).
FIXED_BY_OBSERVATION = (
    "batch_size", "image_size", "channels", "num_classes", "normalization", "dataset", "model", "protocol", "defense",
)


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    """A nested mapping as dotted keys; an empty mapping is a value of its own."""
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def observation_conflicts(cfg: dict[str, Any]) -> list[str]:
    """The keys of ``cfg`` that differ from their defaults but cannot apply to a saved observation: the
    client side (`FIXED_BY_OBSERVATION`) and every ``threat`` key except ``labels``."""
    from fedinvert.config import DEFAULTS

    conflicts = []
    groups = {**{key: key for key in FIXED_BY_OBSERVATION}, **{f"threat.{k}": "threat" for k in DEFAULTS["threat"]}}
    for name, group in groups.items():
        if name == "threat.labels" or group not in cfg:
            continue
        given = _flat(cfg[group], group)
        default = _flat(DEFAULTS.get(group), group)
        for key, value in given.items():
            if (key == name or key.startswith(name + ".")) and value != default.get(key):
                conflicts.append(key)
    return sorted(set(conflicts))


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; CheckpointError naming ``path`` if it is not one."""
    return read_safetensors(path, problem=f"{path} is not a fedinvert {what} file")


def _check_private(path: Path, stored: dict[str, Tensor], obs: Observation) -> tuple[Tensor, Tensor | None]:
    """The private batch and labels of a run's ``tensors.safetensors``, checked against the observation."""
    private, labels = stored.get("private"), stored.get("labels")
    shape = tuple(obs.image_shape)
    if private is None:
        raise CheckpointError(f"{path} holds no 'private' images; move it away to attack without evaluation")
    if not private.is_floating_point() or private.dim() != 4 or tuple(private.shape[1:]) != shape:
        raise CheckpointError(
            f"{path}: 'private' must be (B, {', '.join(map(str, shape))}) floating point images as the observation"
            f" says, got {private.dtype} of shape {tuple(private.shape)}"
        )
    if obs.batch_size is not None and len(private) != obs.batch_size:
        raise CheckpointError(f"{path}: {len(private)} private images for an observation of batch size {obs.batch_size}")
    if not torch.isfinite(private).all() or float(private.min()) < 0 or float(private.max()) > 1:
        raise CheckpointError(f"{path}: 'private' must hold finite images in [0, 1]")
    if labels is not None and (
        labels.dtype.is_floating_point or labels.shape != (len(private),)
        or (len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= obs.num_classes))
    ):
        raise CheckpointError(
            f"{path}: 'labels' must be {len(private)} integers in [0, {obs.num_classes}), got {labels.dtype}"
            f" of shape {tuple(labels.shape)}"
        )
    return private.float(), None if labels is None else labels.long()


def load_observation(path: str | Path, cfg: dict[str, Any]) -> Scenario:
    """Rebuild an Observation from `observation.safetensors`; the private batch is taken from the
    `tensors.safetensors` beside it, if there is one (for evaluation only).

    Everything is checked before a tensor is built: the config must leave the client side alone
    (`observation_conflicts`), the metadata must fit `ObservationMetadata`, the tensors must be the update,
    the weights and buffers, and at most the labels, all finite, and the victim must fit in memory. The saved
    labels are used only when ``threat.labels=known`` grants them now; otherwise they are dropped (the
    scenario's ``info["saved_labels"]`` says which, and run.json records it).

    Raises:
        ConfigError: the file does not exist, a config key cannot apply, threat.labels=known without saved
            labels, or the victim does not fit in memory.
        CheckpointError: the file (or ``tensors.safetensors`` beside it) is not what fedinvert writes.
        ObservationError: the update does not fit the victim or holds NaN/inf.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "observation.safetensors"
    if not path.is_file():
        raise ConfigError(f"observation file {path} does not exist")
    conflicts = observation_conflicts(cfg)
    if conflicts:
        raise ConfigError(
            f"observation={path} fixes the data, the victim and the client side; these keys cannot apply to it:"
            f" {', '.join(conflicts)}; leave them out when re-attacking it"
        )
    tensors, file_meta = _read_safetensors(path, "observation")
    if "fedinvert" not in file_meta:
        raise CheckpointError(f"{path} is not a fedinvert observation file (no fedinvert metadata)")
    from fedinvert.saved_observation import ObservationMetadata  # pydantic models: built only when read

    meta = ObservationMetadata.read(file_meta["fedinvert"], source=str(path))
    unexpected = sorted(n for n in tensors if not n.startswith(("update.", "model.")) and n != "labels")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} (an observation holds update.*, model.*, labels)")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or inf")
    channels, height, width = meta.image_shape
    options = {k: v for k, v in meta.model.model_dump().items() if k != "name"}
    shape = {"in_channels": channels, "num_classes": meta.num_classes, "image_size": height}
    try:
        parameters = parameter_count(meta.model.name, **shape, **options)
    except (ConfigError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot build the victim '{meta.model.name}': {str(err).splitlines()[0]}") from None
    check_memory(images=meta.batch_size or 1, channels=channels, height=height, width=width, parameters=parameters)
    model = build_model(meta.model.name, **shape, **options)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: model weights do not match '{meta.model.name}': {str(err).splitlines()[0]}"
        ) from None
    model.train(meta.model_training)
    update = {k[len("update.") :]: v for k, v in tensors.items() if k.startswith("update.")}
    saved_labels = tensors.get("labels")
    if cfg["threat"]["labels"] == "known" and saved_labels is None:
        raise ConfigError(
            f"threat.labels=known, but {path} holds no labels (the run that saved it did not grant them);"
            " use threat.labels=inferred"
        )
    labels_use = "none saved" if saved_labels is None else "used" if cfg["threat"]["labels"] == "known" else "dropped"
    try:
        obs = Observation(
            model=model,
            update=update,
            kind=meta.kind,
            image_shape=meta.image_shape,
            num_classes=meta.num_classes,
            normalization=(tuple(meta.normalization[0]), tuple(meta.normalization[1])),
            batch_size=meta.batch_size,
            labels=saved_labels if labels_use == "used" else None,
            loss=meta.loss,
            local_training=LocalTraining(**meta.local_training.model_dump()) if meta.local_training else None,
            defenses=tuple(DefenseSpec(name=d.name, params=dict(d.params)) for d in meta.defenses),
        )
    except ObservationError as err:
        raise ObservationError(f"{path}: {err}") from None
    if saved_labels is not None and labels_use == "dropped":
        log.info("%s: the saved labels are not used, as threat.labels=%s", path, cfg["threat"]["labels"])
    private = private_labels = None
    private_file = path.parent / "tensors.safetensors"
    if private_file.is_file():
        private, private_labels = _check_private(private_file, _read_safetensors(private_file, "run tensors")[0], obs)
    granted = {Capability.PRIOR} if cfg.get("prior") else set()
    return Scenario(
        observation=obs, private=private, private_labels=private_labels, granted=frozenset(granted),
        info={"observation": str(path), "victim": meta.model.model_dump(), "saved_labels": labels_use, "data": meta.data},
    )


# -- attacker side -------------------------------------------------------------------------------------
def build_attack(cfg: dict[str, Any], *, device: torch.device) -> tuple[Attack, dict[str, Any]]:
    """The attack named by ``attack.name`` with its fully resolved keyword arguments (also returned)."""
    section = dict(cfg["attack"])
    name = section.pop("name")
    factory, preset = ATTACKS.entry(name)
    kwargs = resolve_keywords("attack", name, factory, section, preset=preset, exclude=("device", "prior"))
    extra: dict[str, Any] = {"device": device}
    from fedinvert.config import class_keywords

    if "prior" in class_keywords(factory):
        if not cfg.get("prior"):
            raise ConfigError(f"attack '{name}' needs a generative prior: set prior=<name> (e.g. prior=face-dcgan)")
        extra["prior"] = build_prior_from_config(cfg, device=device)
    return factory(**kwargs, **extra), kwargs


def build_prior_from_config(cfg: dict[str, Any], *, device: torch.device) -> Any:
    from fedinvert.priors import PRIORS

    section = dict(cfg["prior"])
    name = section.pop("name")
    factory, preset = PRIORS.entry(name)
    kwargs = resolve_keywords("prior", name, factory, section, preset=preset)
    cfg["prior"] = {"name": name, **kwargs}
    return factory(**kwargs).to(device)


# -- evaluation ----------------------------------------------------------------------------------------
def _pool_options(data: dict[str, Any]) -> dict[str, Any]:
    """`public_pool` / `distractor_pool` keywords from the data-set facts of ``Scenario.info["data"]``."""
    return {
        "split": data["split"],
        "exclude_indices": data["indices"],
        "seed": int(data.get("seed", 0)),
        "image_size": data["image_size"],
        "channels": data["channels"],
        "root": data.get("root"),
    }


def reference_row(scenario: Scenario, metrics: dict[str, Any]) -> tuple[Tensor, str] | None:
    """The better-scoring single no-leak guess (``constant`` or ``mean_image``) as (1, C, H, W) in [0, 1] and
    its kind, for figures; None without a reference. Rebuilds the run's (seeded, hence identical) public pool."""
    from fedinvert.data import public_pool

    reference, data = metrics.get("reference"), scenario.info.get("data")
    if reference is None or not data:
        return None
    kind = max(("constant", "mean_image"), key=lambda k: reference[k]["psnr"])
    try:
        public = public_pool(data["dataset"], **_pool_options(data))
    except FedinvertError:
        return None
    return metrics_mod.reference_image(kind, public.images), kind


def _perceptual(private: Tensor, paired: Tensor, settings: dict[str, Any]) -> dict[str, list[float] | None]:
    """Per-image ``st_lpips`` and ``lpips`` (None where not available or not asked for; the reason is logged)."""
    from fedinvert import perceptual

    scores: dict[str, list[float] | None] = {"st_lpips": None, "lpips": None}
    if settings.get("st_lpips"):
        try:
            values = perceptual.st_lpips(private, paired)
        except (FedinvertError, ValueError) as err:
            log.warning("no ST-LPIPS: %s", err)
        else:
            if values is None:
                log.info("no ST-LPIPS: install its weights with pip install --no-deps stlpips-pytorch==0.0.2")
            else:
                scores["st_lpips"] = values.tolist()
    if settings.get("lpips_weights"):
        try:
            scores["lpips"] = perceptual.lpips(private, paired, settings["lpips_weights"]).tolist()
        except (FedinvertError, ValueError) as err:
            log.warning("no LPIPS: %s", err)
    return scores


def _no_leak_data(
    scenario: Scenario, settings: dict[str, Any]
) -> tuple[dict[str, Any] | None, Any, Any]:
    """(reference, public pool, distractor pool) for the private batch, or Nones with a logged reason."""
    from fedinvert.data import distractor_pool, public_pool

    data = scenario.info.get("data")
    if scenario.private is None:
        return None, None, None
    if not data:
        log.warning("no no-leak reference: the observation does not say which data set its batch came from")
        return None, None, None
    common = _pool_options(data)
    try:
        public = public_pool(data["dataset"], **common)
        distractors = distractor_pool(data["dataset"], count=int(settings["reid_distractors"]), **common)
    except FedinvertError as err:  # e.g. the other split's files are not on this machine
        log.warning("no no-leak reference: %s", err)
        return None, None, None
    if len(public) == 0 or public.images.shape[1:] != scenario.private.shape[1:]:
        log.warning("no no-leak reference: %s gives no public images of the batch's shape", data["dataset"])
        return None, None, distractors
    reference = metrics_mod.no_leak_reference(
        scenario.private,
        public.images,
        draws=int(settings["reference_draws"]),
        generator=generator(int(data.get("seed", 0)), "reference"),
    )
    reference["source"] = public.source
    return reference, public, distractors


def evaluate_run(
    scenario: Scenario, rec: Reconstruction, *, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Match, then score (DESIGN §8); GIFD's stages are matched and scored on their own.

    Besides ``evaluate``'s numbers: the no-leak ``reference`` of the private batch (public images from the data
    set's other split, or its own split without the batch), ``leakage_db`` overall, per image and per stage,
    ``reid_top1`` against ``reid_distractors`` images of the batch's split, ``st_lpips`` and ``lpips``
    (None when not available). ``settings`` is the config's ``metrics`` mapping.
    """
    settings = {**METRICS_DEFAULTS, **(settings or {})}
    obs = scenario.observation
    if scenario.private is None:
        result: dict[str, Any] = {"psnr": None, "ssim": None, "mse": None, "label_accuracy": None, "per_image": []}
    else:
        result = metrics_mod.evaluate(
            scenario.private,
            rec.images,
            true_labels=scenario.private_labels,
            rec_labels=rec.labels,
            model=obs.model,
            normalization=obs.normalization,
        )
    reference, _, distractors = _no_leak_data(scenario, settings)
    metrics_mod.attach_reference(result, reference)
    result["gradient_cosine"] = None
    if scenario.private is not None and scenario.private_labels is not None:
        result["gradient_cosine"] = metrics_mod.gradient_cosine(
            obs.model, scenario.private, scenario.private_labels, obs.normalization
        )
    result["reid_top1"] = result["reid_distractors"] = result["reid_source"] = None
    result["st_lpips"] = result["lpips"] = None
    if scenario.private is not None:
        paired = rec.images.detach().float().cpu()[torch.as_tensor(result["order"])]
        for name, values in _perceptual(scenario.private, paired, settings).items():
            result[name] = None if values is None else float(sum(values) / len(values))
            for row in result["per_image"]:
                row[name] = None if values is None else float(values[row["index"]])
        if distractors is not None:
            result["reid_top1"] = metrics_mod.reid_top1(scenario.private, paired, distractors.images)
            result["reid_distractors"] = len(distractors)
            result["reid_source"] = distractors.source
    result["mapping_accuracy"] = _mapping_accuracy(scenario, rec, result.get("order"))
    if rec.stages:
        stages = []
        for stage in rec.stages:
            psnr = None
            if scenario.private is not None:
                order = metrics_mod.match(scenario.private, stage.images)
                psnr = float(metrics_mod.psnr_per_image(scenario.private, stage.images[order]).mean())
            row = {"stage": stage.name, "distance": float(stage.distance), "psnr": psnr,
                   "leakage_db": metrics_mod.leakage_db(psnr, reference),
                   "chosen": stage.name == rec.extras.get("stage")}
            row.update({k: v for k, v in _stage_summary(rec.extras, stage.name).items()
                        if k in ("heldout_distance", "disagreement")})
            stages.append(row)
        result["stages"] = stages
    return result


def _mapping_accuracy(scenario: Scenario, rec: Reconstruction, order: list[int] | None) -> float | None:
    """The share of matched reconstructions that GIFD's label mapping generated under their private image's
    true class of the data set (before ``dataset.label_map``); None when the run did no label mapping."""
    mapping = rec.extras.get("label_mapping")
    info = scenario.info.get("data") or {}
    if not isinstance(mapping, dict) or "mapped_labels" not in mapping or order is None or "indices" not in info:
        return None
    dataset = build_dataset(info["dataset"], root=info.get("root"))
    classes = dataset.labels(split=info["split"])[np.asarray(info["indices"][: len(order)])]
    mapped = mapping["mapped_labels"]
    hits = sum(int(mapped[order[i]] == int(classes[i])) for i in range(len(order)))
    return hits / len(order)


def _stage_summary(extras: dict[str, Any], name: str) -> dict[str, Any]:
    """The attack's own record of stage ``name`` (GIFD's ``stage_summary`` row), or {}."""
    return next((row for row in extras.get("stage_summary", []) if row.get("stage") == name), {})


def stage_label(stage: StageResult, extras: dict[str, Any]) -> str:
    """A stage row's label in stages.png: its name, a mark on the stage the attack returned, the optimised
    distance, and the held-out distance where the selection rule measured one."""
    mark = " (chosen)" if stage.name == extras.get("stage") else ""
    held = _stage_summary(extras, stage.name).get("heldout_distance")
    return f"{stage.name}{mark} d {stage.distance:.3g}" + ("" if held is None else f" held-out {held:.3g}")


# -- the run -------------------------------------------------------------------------------------------
def _prepare_out(cfg: dict[str, Any]) -> OutputTarget:
    """The run folder checked and its temporary sibling reserved, before any work (`fedinvert.run_folder`).

    ``out`` defaults to ``runs/<attack>-<time stamp>`` (recorded in the config); ``overwrite`` must be
    exactly true or false and replaces only a run folder.
    """
    overwrite = cfg.get("overwrite", False)
    if not isinstance(overwrite, bool):  # a YAML "false" or "maybe" must not replace anything
        raise ConfigError(f"overwrite must be true or false, got {overwrite!r}")
    out = cfg.get("out")
    if out is None or out == "":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = f"runs/{cfg['attack']['name']}-{stamp}"
        cfg["out"] = out
    if not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"out must be a folder path, got {out!r}")
    return prepare_output(out, overwrite=overwrite is True)


def run(cfg: dict[str, Any], *, write: bool = True, argv: list[str] | None = None) -> RunResult:
    """Execute one attack run from a resolved config (see `fedinvert.config.resolve_config`).

    Input errors surface as `FedinvertError` before anything is written. With ``write``, the run folder is
    checked and its temporary sibling created before any work; the folder appears only when complete
    (renamed from the sibling), and a run that fails leaves nothing behind.
    """
    cfg = json.loads(json.dumps(validate_config(cfg)))  # checked before any work; a private, plain copy
    target = _prepare_out(cfg) if write else None
    try:
        result = _execute(cfg, argv=argv)
    except BaseException:
        if target is not None:
            target.discard()
        raise
    if target is not None:
        write_run_folder(target.out, result, target=target)
    return result


@dataclass
class _Prepared:
    """A run up to its attack: the checked config (with the scenario's resolved keys), the attack, the scenario."""

    cfg: dict[str, Any]
    device: torch.device
    attack: Attack
    scenario: Scenario
    scenario_seconds: float


def _prepare(cfg: dict[str, Any]) -> _Prepared:
    """Scenario and attack of `run` (the config already checked); nothing is written here."""
    device = resolve_device(cfg.get("device", "auto"))
    t0 = time.perf_counter()
    attack, attack_kwargs = build_attack(cfg, device=device)  # first: a malicious one shapes the model sent
    scenario = build_scenario(cfg, attack=attack)
    if "protocol" in scenario.info:  # record the resolved client and defences (the derived shuffle seed too)
        cfg["protocol"] = dict(scenario.info["protocol"])
        cfg["defense"] = {d["name"]: dict(d["params"]) for d in scenario.info["defenses"]}
        cfg["normalization"] = dict(scenario.info["normalization"])  # auto resolved: config.yaml re-runs alike
    cfg["attack"] = {"name": cfg["attack"]["name"], **attack_kwargs}
    attack.check(scenario.observation, scenario.granted)
    return _Prepared(cfg, device, attack, scenario, time.perf_counter() - t0)


def _execute(cfg: dict[str, Any], *, argv: list[str] | None) -> RunResult:
    """Scenario, attack and evaluation of `run` (the config already checked); nothing is written here."""
    return _attack(_prepare(cfg), argv=argv)


def _attack(prepared: _Prepared, *, argv: list[str] | None) -> RunResult:
    """The prepared run's attack under the determinism policy, then its evaluation and record."""
    cfg = prepared.cfg
    rng = generator(int(cfg["seed"]), "attack")
    with determinism.policy(prepared.device, seed=int(cfg["seed"])) as determinism_record:  # docs/determinism.md
        t1 = time.perf_counter()
        rec = prepared.attack.reconstruct(prepared.scenario.observation, rng=rng, progress=bool(cfg.get("progress")))
        wall = time.perf_counter() - t1
    return _finish(prepared, rec, wall=wall, determinism_record=determinism_record, argv=argv)


def _finish(prepared: _Prepared, rec: Reconstruction, *, wall: float, determinism_record: dict[str, Any],
            argv: list[str] | None, batched_seconds: float | None = None) -> RunResult:
    """Evaluation and the run's record after its attack took ``wall`` seconds (its share of a batched attack
    that took ``batched_seconds``)."""
    cfg, scenario, attack = prepared.cfg, prepared.scenario, prepared.attack
    compile_seconds = float(rec.extras.get("compile_seconds", 0.0))
    metrics = _evaluate_or_record(scenario, rec, settings=cfg.get("metrics"))
    metrics.update({"seconds": wall - compile_seconds, "compile_seconds": compile_seconds, "iterations": rec.iterations,
                    "distance": rec.score})
    timings = {"scenario_seconds": prepared.scenario_seconds, "attack_seconds": wall, "compile_seconds": compile_seconds}
    if batched_seconds is not None:
        timings["batched_attack_seconds"] = batched_seconds
    run_info = {
        "fedinvert": fedinvert.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(prepared.device),
        "seed": cfg["seed"],
        "determinism": determinism_record,
        "threat": cfg["threat"],
        "capabilities": sorted(c.value for c in scenario.granted),
        "attack_requires": sorted(c.value for c in attack.requires),
        "scenario": scenario.info,
        "timings": timings,
        "interrupted": rec.interrupted,
        "attack_details": extras_without_tensors(rec.extras),  # tensors go to tensors.safetensors
        "command": argv if argv is not None else sys.argv,
    }
    return RunResult(config=cfg, metrics=metrics, reconstruction=rec, scenario=scenario, run_info=run_info)


def batch_key(cfg: dict[str, Any], varying: Sequence[str] = ("seed",)) -> str:
    """What runs must share to run as one batched attack (`run_batched`): everything but the ``varying``
    (dotted) keys, which index the private batches (a study's replicates), and the run's folder."""
    kept = json.loads(json.dumps(cfg, default=str))
    for dotted in (*varying, "out", "overwrite", "progress"):
        *parents, leaf = dotted.split(".")
        node = kept
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(kept, sort_keys=True)


def run_batched(cfgs: Sequence[dict[str, Any]], *, argv: list[str] | None = None, measure: bool = True,
                varying: Sequence[str] = ("seed",)) -> list[RunResult | Exception]:
    """`run` for several configs that differ only in the ``varying`` keys (their seed, or whichever keys index
    a study's private batches), their attacks as one batch where they can be.

    Each run is checked, reserves its folder and builds its scenario as `run` does; one whose config or data
    fails gets its exception in the returned list and the others go on. When the attack can batch the rest
    (`PixelAttack.batch_refusal`: Inverting Gradients on plain gradients of one victim architecture), their
    private batches run as chains of one vmapped step (`PixelAttack.reconstruct_batched`); otherwise one after
    another. Every run is then evaluated and written to its own folder, its ``run.json`` recording the batch
    (``attack_details.batched``, ``timings.batched_attack_seconds``; ``attack_seconds`` is its share).
    Batching is measured first (`PixelAttack.batch_timing`): where one batched step is not faster than the
    runs' separate steps, they run one after another, and ``run.json``'s ``batched`` says why (``measure=False``
    batches whatever can be batched).
    Ctrl-C discards the reserved folders of the runs not written yet and propagates.
    """
    if len({batch_key(cfg, varying) for cfg in cfgs}) > 1:
        raise ConfigError(f"run_batched takes configs that differ only in {', '.join(varying)} and out")
    results: list[RunResult | Exception | None] = [None] * len(cfgs)
    live: list[tuple[int, _Prepared, OutputTarget]] = []
    try:
        for i, raw in enumerate(cfgs):
            try:
                cfg = json.loads(json.dumps(validate_config(raw)))
                target = _prepare_out(cfg)
            except Exception as err:  # this run's config or folder: recorded, the others go on
                results[i] = err
                continue
            try:
                live.append((i, _prepare(cfg), target))
            except Exception as err:
                target.discard()
                results[i] = err
        observations = [p.scenario.observation for _, p, _ in live]
        attack = live[0][1].attack if live else None
        note: dict[str, Any] | None = None
        if len(live) > 1:
            refusal = getattr(attack, "batch_refusal", None)
            reason = f"{type(attack).__name__} runs alone" if refusal is None else refusal(observations)
            timing: dict[str, float] = {}
            if reason is None and measure:
                timing = attack.batch_timing(observations)  # type: ignore[union-attr]
                if timing["batched_step_seconds"] >= timing["separate_steps_seconds"]:
                    reason = "the batched step is not faster than separate steps here"
            if reason is None:
                _attack_batched(live, results, argv, timing)
                return [r if r is not None else RuntimeError("not run") for r in results]
            note = {"runs": len(live), "refused": reason, **timing}
            log.info("%d runs not batched: %s", len(live), reason)
        while live:
            i, prepared, target = live.pop(0)
            try:
                results[i] = _attack_one(prepared, target, argv, note)  # discards its own folder when it fails
            except Exception as err:
                results[i] = err
    except BaseException:
        for _, _, target in live:
            target.discard()
        raise
    return [r if r is not None else RuntimeError("not run") for r in results]


def _attack_one(prepared: _Prepared, target: OutputTarget, argv: list[str] | None,
                note: dict[str, Any] | None = None) -> RunResult:
    try:
        result = _attack(prepared, argv=argv)
        if note is not None:  # asked to batch with others, and why it ran alone
            result.run_info["batched"] = note
    except BaseException:
        target.discard()
        raise
    write_run_folder(target.out, result, target=target)
    return result


def _attack_batched(live: list[tuple[int, _Prepared, OutputTarget]], results: list[Any],
                    argv: list[str] | None, timing: dict[str, float]) -> None:
    first = live[0][1]
    rngs = [generator(int(p.cfg["seed"]), "attack") for _, p, _ in live]
    # the first run's seed seeds torch's global generators; the attack draws only from each run's own rng
    with determinism.policy(first.device, seed=int(first.cfg["seed"])) as record:
        t1 = time.perf_counter()
        recs = first.attack.reconstruct_batched([p.scenario.observation for _, p, _ in live], rngs=rngs)  # type: ignore[attr-defined]
        wall = time.perf_counter() - t1
    for rec in recs:
        rec.extras["batched"].update(timing)  # the probe that chose batching
        i, prepared, target = live.pop(0)
        try:
            result = _finish(prepared, rec, wall=wall / len(recs), determinism_record=record, argv=argv,
                             batched_seconds=wall)
        except BaseException as err:
            target.discard()
            if not isinstance(err, Exception):
                raise
            results[i] = err
            continue
        try:
            write_run_folder(target.out, result, target=target)  # discards its folder when it fails
        except Exception as err:
            results[i] = err
            continue
        results[i] = result


def _evaluate_or_record(scenario: Scenario, rec: Reconstruction, *, settings: dict[str, Any] | None) -> dict[str, Any]:
    """`evaluate_run`, or, when the metrics cannot be computed (NaN images, a failing metric, Ctrl-C), null
    metrics with an ``error`` field: the finished reconstruction is written either way."""
    try:
        return evaluate_run(scenario, rec, settings=settings)
    except KeyboardInterrupt:
        reason = "evaluation interrupted (Ctrl-C)"
    except Exception as err:  # whatever fails in a metric must not lose the finished attack; it is recorded
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    log.warning("the metrics could not be computed (%s); the run is written with null metrics", reason)
    return {"psnr": None, "ssim": None, "mse": None, "label_accuracy": None, "per_image": [], "error": reason}


def write_run_folder(out: Path, result: RunResult, *, target: OutputTarget | None = None) -> None:
    """Write everything into the temporary sibling of ``out``, then rename it to ``out`` (replacing a run
    folder there with overwrite); sets ``result.out``. Ctrl-C meanwhile is held back until the folder is
    complete (logged, not raised: the finished run is kept).

    Args:
        out: the run folder.
        result: what to write.
        target: the reservation `run` made before the attack; None reserves one now (no overwrite).

    Raises:
        ConfigError: the folder cannot be written or moved into place (the message says where the finished
            run is when it was written).
    """
    if target is None:
        target = prepare_output(out, overwrite=False)
    with deferred_sigint() as interrupted:
        try:
            _write_contents(target.tmp, result)
        except OSError as err:
            target.discard()
            raise ConfigError(f"cannot write the run folder {out} ({err.strerror or err})") from None
        except BaseException:
            target.discard()
            raise
        target.finish()
    result.out = target.out
    if interrupted:
        log.warning("Ctrl-C came while the run folder was written; it was completed first: %s", target.out)


def extras_tensors(extras: dict[str, Any], prefix: str = "extras") -> dict[str, torch.Tensor]:
    """The tensors of an attack's ``extras`` (nested dicts too) keyed ``extras.<key>.<sub key>``, on the CPU."""
    found: dict[str, torch.Tensor] = {}
    for key, value in extras.items():
        if isinstance(value, torch.Tensor):
            found[f"{prefix}.{key}"] = value.detach().cpu().contiguous()
        elif isinstance(value, dict):
            found.update(extras_tensors(value, f"{prefix}.{key}"))
    return found


def extras_without_tensors(extras: dict[str, Any], prefix: str = "extras") -> dict[str, Any]:
    """``extras`` for run.json: each tensor replaced by where `extras_tensors` saves it and its shape."""
    plain: dict[str, Any] = {}
    for key, value in extras.items():
        if isinstance(value, torch.Tensor):
            plain[key] = f"tensors.safetensors:{prefix}.{key} {tuple(value.shape)}"
        elif isinstance(value, dict):
            plain[key] = extras_without_tensors(value, f"{prefix}.{key}")
        else:
            plain[key] = value
    return plain


def _write_contents(folder: Path, result: RunResult) -> None:
    rec, scenario = result.reconstruction, result.scenario
    (folder / "config.yaml").write_text(yaml.safe_dump(result.config, sort_keys=False))
    (folder / "run.json").write_text(json_text(result.run_info, what="run.json"))
    (folder / "metrics.json").write_text(json_text(result.metrics, what="metrics.json"))
    (folder / "history.json").write_text(json_text(rec.history, what="history.json", indent=1))
    tensors = {"reconstruction": rec.images.contiguous()}
    if rec.labels is not None:
        tensors["reconstructed_labels"] = rec.labels.contiguous()
    tensors.update(extras_tensors(rec.extras))
    if scenario.private is not None:
        tensors["private"] = scenario.private.contiguous()
        tensors["labels"] = scenario.private_labels.contiguous()  # type: ignore[union-attr]
    save_file(tensors, str(folder / "tensors.safetensors"))
    if scenario.sent_model is not None:
        save_file(scenario.sent_model, str(folder / "sent_model.safetensors"))
    save_observation(folder / "observation.safetensors", scenario, result.config)
    order = result.metrics.get("order")
    if scenario.private is not None and order is not None:
        matched = rec.images[torch.as_tensor(order)]
        rows, names = [scenario.private, matched], ["private", "reconstructed"]
        guess = reference_row(scenario, result.metrics)
        if guess is not None:
            rows.append(guess[0])
            names.append(f"no-leak ({guess[1].replace('_', ' ')})")
        save_grid(folder / "reconstruction.png", rows, labels=names, caption=leakage_caption(result.metrics))
    else:
        save_grid(folder / "reconstruction.png", [rec.images], labels=["reconstructed"])
    if rec.stages:
        rows = [s.images for s in rec.stages]
        names = [stage_label(s, rec.extras) for s in rec.stages]
        if scenario.private is not None:
            rows, names = [scenario.private, *rows], ["private", *names]
        save_grid(folder / "stages.png", rows, labels=names)
    if rec.history:
        save_loss_plot(folder / "loss.png", rec.history, title=str(result.config["attack"]["name"]))


__all__ = ["RunResult", "Scenario", "build_attack", "build_scenario", "evaluate_run", "run", "FedinvertError"]
