"""Client mods (``flwr.clientapp.ClientApp(mods=[...])``) that let a Flower client defend itself.

- `verify_mod` runs `fedinvert.verify.verify_model` on the model a train message brings, before the client
  trains: a model that fails a check (an imprint block, trap weights, a fished classifier, an architecture other
  than the agreed one) is refused with an error reply, and the client's data never touch it.
- `leakage_mod` estimates, after the client trained, how much its outgoing update leaks: it runs a short
  attack against its own update (the strongest honest server: local hyper-parameters and batch size known)
  and scores it against the client's own batch and its no-leak reference. Above ``threshold_db`` it refuses
  to send or sends a defended update instead.

Both log one line per round and keep their counts in the node's ``Context.state`` (``fedinvert.verify`` and
``fedinvert.leakage`` config records), so a client can report how often it refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message
from torch import Tensor

from fedinvert.errors import ConfigError
from fedinvert.flower.capture import local_training, named_state, victim_model
from fedinvert.observation import Observation

log = logging.getLogger(__name__)

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]

#: Error codes of the replies these mods refuse with (outside Flower's own 0-99 range).
REFUSED_SUSPICIOUS_MODEL = 4001
REFUSED_LEAKAGE = 4002

DataFunction = Callable[[Message, Context], tuple[Tensor, Tensor]]


def _count(context: Context, record: str, key: str, add: int = 1) -> int:
    """Add ``add`` to counter ``key`` of config record ``record`` in the node's state; the new value."""
    if record not in context.state.config_records:
        context.state[record] = ConfigRecord()
    counts = context.state.config_records[record]
    value = counts.get(key, 0)
    counts[key] = (int(value) if isinstance(value, int | float) else 0) + add
    return int(counts[key])  # type: ignore[arg-type]


def _is_train(message: Message) -> bool:
    return message.metadata.message_type.split(".")[0] == "train"


def verify_mod(
    reference: Mapping[str, Any] | torch.nn.Module,
    *,
    image_shape: tuple[int, int, int] | None = None,
    refuse: bool = True,
    arrays_key: str = "arrays",
) -> Mod:
    """A client mod that checks every model it is sent for training (`fedinvert.verify.verify_model`).

    Args:
        reference: the architecture the federation agreed on: a fedinvert model spec
            (``{"name": "lenet-dlg", "in_channels": 1, "num_classes": 10, "image_size": 28}``) or a module.
        image_shape: (C, H, W), when the reference does not give it.
        refuse: refuse a suspicious model with an error reply (True) or only log the verdict (False).
        arrays_key: the record of the message that holds the model (Flower's strategies: ``arrays``).
    """
    from fedinvert.verify import verify_model

    if not isinstance(refuse, bool):
        raise ConfigError(f"refuse must be true or false, got {refuse!r}")

    def mod(message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if not _is_train(message) or arrays_key not in message.content.array_records:
            return call_next(message, context)
        state = message.content.array_records[arrays_key].to_torch_state_dict()
        verdict = verify_model(state, reference, image_shape=image_shape)
        checked = _count(context, "fedinvert.verify", "checked")
        if not verdict.suspicious:
            log.info("node %d: verify-model passed (%d checks)", context.node_id, len(verdict.findings))
            return call_next(message, context)
        failed = ", ".join(verdict.failed_checks)
        suspicious = _count(context, "fedinvert.verify", "suspicious")
        log.warning("node %d: the received model is suspicious (%s; %d of %d models so far)%s", context.node_id,
                    failed, suspicious, checked, ": refusing to train on it" if refuse else "")
        if not refuse:
            return call_next(message, context)
        _count(context, "fedinvert.verify", "refused")
        reason = f"fedinvert verify-model: refused to train on a suspicious model (failed: {failed})"
        return Message(Error(code=REFUSED_SUSPICIOUS_MODEL, reason=reason), reply_to=message)

    return mod


def leakage_mod(
    *,
    data_fn: DataFunction,
    victim: Mapping[str, Any],
    image_shape: tuple[int, int, int],
    num_classes: int,
    data: Mapping[str, Any],
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    threshold_db: float = 0.0,
    action: Literal["refuse", "defend", "log"] = "refuse",
    defense: Mapping[str, Mapping[str, Any]] | None = None,
    attack: str = "inverting_gradients",
    attack_options: Mapping[str, Any] | None = None,
    train_mode: bool = True,
    arrays_key: str = "arrays",
    device: str = "cpu",
    seed: int = 0,
) -> Mod:
    """A client mod that attacks its own outgoing update and acts when it leaks more than ``threshold_db``.

    The estimate is ``leakage_db`` of the attack's reconstruction: its PSNR against the batch the client
    trained on minus the no-leak reference of that batch (what an attacker reaches without the update), so
    0 dB means "no better than a plausible image". A short attack is a lower bound on what a patient server
    reaches: choose the threshold with margin.

    Args:
        data_fn: ``(message, context) -> (images, labels)``: the client's training images of this round in
            [0, 1], (B, C, H, W), and their labels; the ClientApp's own data loading.
        victim, image_shape, num_classes, normalization: the model and inputs, as `CapturingStrategy` takes them.
        data: the data-set facts of the client's images for the reference (``{"dataset": "fashion-mnist",
            "split": "train", "image_size": 28, "channels": 1}``).
        threshold_db: act when the estimated leakage exceeds this.
        action: ``refuse`` (an error reply: nothing is sent), ``defend`` (apply ``defense`` to the update,
            estimate again, send it), or ``log`` only.
        defense: fedinvert defences by name and keywords for ``defend``
            (default ``{"gaussian_noise": {"std": 0.01}}``).
        attack, attack_options: the self-attack and its keywords (default Inverting Gradients, 300 iterations).
        device: where the self-attack runs.
    """
    from fedinvert.config import resolve_config

    if action not in ("refuse", "defend", "log"):
        raise ConfigError(f"action must be refuse, defend or log, got {action!r}")
    if isinstance(threshold_db, bool) or not isinstance(threshold_db, int | float) or not math.isfinite(threshold_db):
        raise ConfigError(f"threshold_db must be a finite number, got {threshold_db!r}")
    if not callable(data_fn):
        raise ConfigError("data_fn must be a callable (message, context) -> (images, labels)")
    if not isinstance(data, Mapping) or "dataset" not in data:
        raise ConfigError("data must name the clients' data set ({'dataset': ..., 'split': ...}) for the reference")
    shape = (int(image_shape[0]), int(image_shape[1]), int(image_shape[2]))
    channels = shape[0]
    norm = normalization or ((0.5,) * channels, (0.5,) * channels)
    defense = dict(defense or {"gaussian_noise": {"std": 0.01}})
    options = {"iterations": 300, "compile": False, **dict(attack_options or {})}
    overrides = [f"attack={attack}", *(f"attack.{k}={_yaml(v)}" for k, v in options.items()),
                 f"device={device}", "progress=false", f"seed={seed}", "metrics.st_lpips=false"]
    cfg = resolve_config(overrides)  # a wrong attack name or keyword is refused here, not in round 1
    facts = {"indices": [], "seed": seed, "root": None, "image_size": shape[1], "channels": channels, **dict(data)}
    template = victim_model(victim, shape, num_classes)

    def estimate(observation: Observation, images: Tensor, labels: Tensor) -> dict[str, Any]:
        from fedinvert.runner import Scenario, build_attack, evaluate_run
        from fedinvert.seeding import generator

        run_cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
        built, _ = build_attack(run_cfg, device=torch.device(device))
        built.check(observation, frozenset())
        scenario = Scenario(observation=observation, private=images, private_labels=labels, info={"data": facts})
        rec = built.reconstruct(observation, rng=generator(seed, "attack"), progress=False)
        metrics = evaluate_run(scenario, rec, settings=run_cfg["metrics"])
        return {"psnr": metrics["psnr"], "leakage_db": metrics.get("leakage_db"),
                "reference_psnr": (metrics.get("reference") or {}).get("psnr")}

    def mod(message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if not _is_train(message) or arrays_key not in message.content.array_records:
            return call_next(message, context)
        reply = call_next(message, context)
        if reply.has_error() or arrays_key not in reply.content.array_records:
            return reply
        images, labels = data_fn(message, context)
        sent = named_state(message.content.array_records[arrays_key], template.state_dict())
        after = named_state(reply.content.array_records[arrays_key], sent)
        config = dict(message.content.config_records["config"]) if "config" in message.content.config_records else {}
        metrics: dict[str, Any] = {}
        for record in reply.content.metric_records.values():
            metrics.update(dict(record))
        local, _ = local_training(metrics, config)
        model = victim_model(victim, shape, num_classes)
        model.load_state_dict(sent)
        model.train(train_mode)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        update = {n: after[n] - sent[n] for n in trainable}

        def observe(shared: dict[str, Tensor]) -> Observation:
            return Observation(model=model, update=shared, kind="weight_delta", image_shape=shape,
                               num_classes=num_classes, normalization=norm, batch_size=len(images),
                               local_training=local)

        found = estimate(observe(update), images, labels)
        leak = found["leakage_db"]
        _count(context, "fedinvert.leakage", "checked")
        line = (f"node {context.node_id}: self-attack {attack} PSNR {found['psnr']:.2f} dB, reference "
                f"{found['reference_psnr']:.2f} dB, leakage {leak:+.2f} dB (threshold {threshold_db:+.2f})"
                if leak is not None else f"node {context.node_id}: self-attack PSNR {found['psnr']:.2f} dB "
                "(no reference: the data set's public split is not available)")
        if leak is None or leak <= threshold_db or action == "log":
            log.info("%s", line)
            return reply
        if action == "refuse":
            _count(context, "fedinvert.leakage", "refused")
            log.warning("%s: refusing to send the update", line)
            reason = f"fedinvert leakage: the update leaks {leak:+.2f} dB over the no-leak reference"
            return Message(Error(code=REFUSED_LEAKAGE, reason=reason), reply_to=message)
        from fedinvert.defenses import build_defenses

        normalised = (images - torch.tensor(norm[0]).view(1, -1, 1, 1)) / torch.tensor(norm[1]).view(1, -1, 1, 1)
        defended = dict(update)
        for one in build_defenses({k: dict(v) for k, v in defense.items()}):
            defended = one.apply(defended, model=model, inputs=normalised, labels=labels,
                                 rng=torch.Generator().manual_seed(seed))
        again = estimate(observe(defended), images, labels)
        _count(context, "fedinvert.leakage", "defended")
        log.warning("%s: sending the update under %s instead (leakage %s dB)", line, ", ".join(defense),
                    "n/a" if again["leakage_db"] is None else f"{again['leakage_db']:+.2f}")
        state = dict(after)
        for name in trainable:
            state[name] = sent[name] + defended[name]
        reply.content[arrays_key] = ArrayRecord(state)
        return reply

    return mod


def _yaml(value: Any) -> str:
    """A keyword value as a config override's right-hand side."""
    import json

    return json.dumps(value) if not isinstance(value, str) else value
