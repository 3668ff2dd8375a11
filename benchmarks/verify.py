"""`fedinvert.verify.verify_model` on benign and malicious models: detection rate and false-alarm rate.

    OMP_NUM_THREADS=1 python benchmarks/verify.py [--csv benchmarks/results/verify.csv] [--steps 300]

Benign models (all 1-channel 28 px, 10 classes, Fashion-MNIST's shape, unless stated):

* random inits of every victim in ``MODELS`` at a small width with three seeds, plus option variants
  (convnet with GroupNorm, LeNet-5 with ReLU, a two-layer MLP, a 3-channel 32 px convnet and DLG LeNet, the
  full-width convnet and ResNet-18);
* models trained on the Fashion-MNIST train split for ``--steps`` SGD steps (batch 64, lr 0.05, momentum 0.9),
  some with weight decay 5e-3 or with Adam (lr 1e-3) instead;
* models after five FedAvg rounds (4 clients of 64 images, 2 local epochs, local batch 16, lr 0.05);
* trained models fine-tuned for ``--steps`` // 2 steps on two classes only (a label-skewed client), and at
  lr 0.2 and 0.5 on all classes (4× and 10× the training rate; at 0.5 the ReLU MLP and LeNet-5 diverge to
  chance accuracy, the hardest benign case for the trap statistics: dead rows).

The CSV's ``test_accuracy`` (first 2,000 test images) shows how far each trained benign model got.

Malicious models: every registered attack that requires MALICIOUS_MODEL, built through its own
``modify_model`` at several strengths (``imprint``: bins 10/100/1000 × scale 1e-3/0.1; ``trap_weights``:
``rate`` 0.01–0.5; ``fishing``: ``magnitude`` 5–100; any other such attack at its defaults), on the victims it supports,
untrained and trained; and hand-built trap weights and fishing heads from the papers' descriptions (so the
detectors are tested even where the registered attacks choose other parameters).

Prints one row per model and the summary (detections, false alarms, and per check the benign extreme beside
its threshold), and writes the rows as CSV.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.base import ServerContext
from fedinvert.config.schema import class_keywords
from fedinvert.data import build_dataset
from fedinvert.errors import FedinvertError
from fedinvert.fl import FedAvgClient
from fedinvert.models import MODELS, build_model, last_linear
from fedinvert.observation import Capability
from fedinvert.verify import Finding, Verdict, verify_model

NORM = ((0.2860,), (0.3530,))
SHAPE = {"in_channels": 1, "num_classes": 10, "image_size": 28}
SMALL = {"convnet": {"width": 0.25}, "resnet18": {"width": 0.25}, "resnet18-imagenet": {"width": 0.25},
         "resnet34": {"width": 0.25}}
STRENGTHS: dict[str, tuple[str, tuple[float, ...]]] = {
    "trap_weights": ("rate", (0.01, 0.05, 0.1, 0.25, 0.5)),  # the default 4/B: 0.25 at B = 16, 0.5 at B ≤ 8
    "fishing": ("magnitude", (5.0, 20.0, 100.0)),
}


@dataclass
class Case:
    kind: str  # benign | malicious
    name: str
    model: str
    strength: str
    sent: nn.Module
    spec: dict[str, Any]


class Fashion:
    """Fashion-MNIST train split in the victims' normalised space, loaded once."""

    def __init__(self, count: int = 20_000) -> None:
        dataset = build_dataset("fashion-mnist")
        labels = torch.tensor(dataset.labels(split="train")[:count])
        images = dataset.take(list(range(count)), split="train").images
        self.public = images[:2000]
        self.inputs = (images - NORM[0][0]) / NORM[1][0]
        self.labels = labels
        test = dataset.take(list(range(2000)), split="test")
        self.test_inputs = (test.images - NORM[0][0]) / NORM[1][0]
        self.test_labels = test.labels.long()

    def accuracy(self, model: nn.Module) -> float:
        """Top-1 accuracy on the first 2,000 test images (eval mode)."""
        model.eval()
        with torch.no_grad():
            return float((model(self.test_inputs).argmax(1) == self.test_labels).double().mean())

    def batch(self, gen: torch.Generator, size: int, classes: tuple[int, ...] | None = None) -> tuple:
        pool = torch.arange(len(self.labels))
        if classes is not None:
            pool = pool[torch.isin(self.labels, torch.tensor(classes))]
        pick = pool[torch.randint(len(pool), (size,), generator=gen)]
        return self.inputs[pick], self.labels[pick]


def spec_of(name: str, **options: Any) -> dict[str, Any]:
    return {"name": name, **SHAPE, **{**SMALL.get(name, {}), **options}}


def label(spec: dict[str, Any]) -> str:
    """The model's name and the settings that differ from ``spec_of(name)``, e.g. ``mlp(hidden=64,layers=2)``."""
    plain = spec_of(spec["name"])
    changed = ",".join(f"{k}={v}" for k, v in spec.items() if k != "name" and plain.get(k) != v)
    return f"{spec['name']}({changed})" if changed else spec["name"]


def build(spec: dict[str, Any], seed: int) -> nn.Module:
    options = {k: v for k, v in spec.items() if k != "name"}
    return build_model(spec["name"], seed=seed, **options)


def sgd(model: nn.Module, data: Fashion, *, steps: int, lr: float, seed: int,
        classes: tuple[int, ...] | None = None, adam: bool = False, weight_decay: float = 0.0) -> nn.Module:
    """``steps`` SGD steps (batch 64, momentum 0.9, mean cross-entropy; Adam with ``adam``) on the train
    split, in place."""
    gen = torch.Generator().manual_seed(seed)
    optimizer: torch.optim.Optimizer
    if adam:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        x, y = data.batch(gen, 64, classes)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
    return model.eval()


def fedavg(model: nn.Module, data: Fashion, *, rounds: int, clients: int, seed: int) -> nn.Module:
    """``rounds`` FedAvg rounds: each client trains on its own 64 images, the server adds the mean delta."""
    gen = torch.Generator().manual_seed(seed)
    client = FedAvgClient(local_epochs=2, local_batch_size=16, lr=0.05, mode="train", shuffle_seed=seed)
    for _ in range(rounds):
        deltas = [client.update(model, *data.batch(gen, 64)) for _ in range(clients)]
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.add_(torch.stack([d[name] for d in deltas]).mean(0))
    return model.eval()


def benign(data: Fashion, steps: int) -> Iterator[Case]:
    for name in MODELS:
        spec = spec_of(name)
        for seed in (0, 1, 2):
            yield Case("benign", "init", name, f"seed={seed}", build(spec, seed), spec)
    variants = [spec_of("convnet", norm="group"), spec_of("lenet5", activation="relu"),
                spec_of("mlp", hidden=64, layers=2), {**spec_of("convnet"), "in_channels": 3, "image_size": 32},
                {**spec_of("lenet-dlg"), "in_channels": 3, "image_size": 32}, {**spec_of("convnet"), "width": 1.0},
                {**spec_of("resnet18"), "width": 1.0}]
    for spec in variants:
        yield Case("benign", "init", label(spec), "seed=0", build(spec, 0), spec)
    trained: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    for spec in [spec_of("mlp"), spec_of("mlp", hidden=64, layers=2), spec_of("lenet5"),
                 spec_of("lenet5", activation="relu"), spec_of("convnet"), spec_of("lenet-dlg"), spec_of("resnet18")]:
        lr = 0.01 if spec["name"] == "lenet-dlg" else 0.05  # DLG's U(-0.5, 0.5) LeNet diverges at 0.05
        model = sgd(build(spec, 0), data, steps=steps, lr=lr, seed=1)
        trained[spec["name"] + spec.get("activation", "") + str(spec.get("layers", ""))] = (model, spec)
        yield Case("benign", "trained", label(spec), f"steps={steps}", model, spec)
    for spec in [spec_of("mlp"), spec_of("lenet5", activation="relu"), spec_of("convnet")]:
        model = sgd(build(spec, 1), data, steps=steps, lr=1e-3, seed=6, adam=True)
        yield Case("benign", "trained", label(spec), f"adam,steps={steps}", model, spec)
        model = sgd(build(spec, 2), data, steps=steps, lr=0.05, seed=7, weight_decay=5e-3)
        yield Case("benign", "trained", label(spec), f"weight_decay=5e-3,steps={steps}", model, spec)
    for spec in [spec_of("mlp"), spec_of("lenet5", activation="relu"), spec_of("convnet")]:
        yield Case("benign", "fedavg", label(spec), "rounds=5",
                   fedavg(build(spec, 3), data, rounds=5, clients=4, seed=2), spec)
    for key in ("mlp", "mlp2", "lenet5relu", "convnet"):
        model, spec = trained[key]
        skewed = sgd(copy.deepcopy(model), data, steps=steps // 2, lr=0.05, seed=3, classes=(0, 1))
        yield Case("benign", "finetuned", label(spec), "classes=0,1", skewed, spec)
        for lr in (0.2, 0.5):
            hot = sgd(copy.deepcopy(model), data, steps=steps // 2, lr=lr, seed=4)
            yield Case("benign", "finetuned", label(spec), f"lr={lr}", hot, spec)
    for key in ("mlp", "convnet"):
        yield Case("benign", "trained+fedavg", label(trained[key][1]), "rounds=3",
                   fedavg(copy.deepcopy(trained[key][0]), data, rounds=3, clients=4, seed=5), trained[key][1])


def handbuilt_trap(model: nn.Module, factor: float, seed: int = 0) -> nn.Module:
    """Trap weights as Boenisch et al. describe them: the first linear layer's rows get half their entries
    negative (chosen at random), and the negative ones scaled by ``factor`` > 1."""
    sent = copy.deepcopy(model)
    layer = next(m for m in sent.modules() if isinstance(m, nn.Linear))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = layer.weight.abs()
        negative = torch.rand(w.shape, generator=gen).argsort(1) < w.shape[1] // 2
        layer.weight.copy_(torch.where(negative, -factor * w, w))
    return sent


def handbuilt_fishing(model: nn.Module, magnitude: float, target: int = 3) -> nn.Module:
    """Fishing as Wen et al. describe it: every classifier row but the target class's zeroed, their biases
    set to ``magnitude``."""
    sent = copy.deepcopy(model)
    head = last_linear(sent)
    with torch.no_grad():
        keep = torch.arange(head.out_features) == target
        head.weight.mul_(keep[:, None].float())
        if head.bias is not None:
            head.bias.copy_(torch.where(keep, head.bias, torch.full_like(head.bias, magnitude)))
    return sent


def malicious(data: Fashion, steps: int) -> Iterator[Case]:
    context = ServerContext(image_shape=(1, 28, 28), num_classes=10, normalization=NORM, public=data.public)
    victims = [spec_of("convnet"), spec_of("lenet5"), spec_of("mlp"), spec_of("mlp", hidden=64, layers=2),
               spec_of("resnet18")]
    trained = {"convnet": sgd(build(spec_of("convnet"), 0), data, steps=steps, lr=0.05, seed=1),
               "mlp": sgd(build(spec_of("mlp"), 0), data, steps=steps, lr=0.05, seed=1)}
    names = [n for n in ATTACKS if Capability.MALICIOUS_MODEL in ATTACKS.entry(n)[0].requires]  # type: ignore[attr-defined]
    for attack_name in names:
        settings: list[dict[str, Any]]
        if attack_name == "imprint":
            settings = [{"bins": b, "scale": s} for b in (10, 100, 1000) for s in (1e-3, 0.1)]
        elif attack_name in STRENGTHS and STRENGTHS[attack_name][0] in class_keywords(ATTACKS.entry(attack_name)[0]):
            knob, values = STRENGTHS[attack_name]
            settings = [{knob: v} for v in values]
        else:
            settings = [{}]
        for spec in victims:
            starts = [("init", build(spec, 7))]
            if spec == spec_of(spec["name"]) and spec["name"] in trained:
                starts.append(("trained", trained[spec["name"]]))
            for start, victim in starts:
                for kwargs in settings:
                    if attack_name == "imprint" and spec["name"] not in ("convnet", "lenet5") and kwargs["bins"] != 100:
                        continue  # imprint is architecture-agnostic; the grid runs in full on two victims
                    strength = ",".join(f"{k}={v}" for k, v in kwargs.items()) or "default"
                    try:
                        sent = ATTACKS.build(attack_name, device="cpu", **kwargs).modify_model(
                            copy.deepcopy(victim), context)
                    except FedinvertError as err:
                        print(f"skipped    {attack_name} {strength} on {label(spec)}: {err}")
                        continue
                    yield Case("malicious", f"{attack_name}/{start}", label(spec), strength, sent, spec)
    for spec in (spec_of("mlp"), spec_of("mlp", hidden=64, layers=2)):
        starts = [("init", build(spec, 8))] + ([("trained", trained["mlp"])] if spec == spec_of("mlp") else [])
        for start, victim in starts:
            for factor in (1.2, 1.5, 2.0, 4.0):
                yield Case("malicious", f"handbuilt_trap/{start}", label(spec), f"factor={factor}",
                           handbuilt_trap(victim, factor), spec)
    for spec in (spec_of("convnet"), spec_of("mlp"), spec_of("lenet5")):
        starts = [("init", build(spec, 8))] + ([("trained", trained[spec["name"]])] if spec["name"] in trained else [])
        for start, victim in starts:
            for magnitude in (5.0, 20.0, 100.0):
                yield Case("malicious", f"handbuilt_fishing/{start}", label(spec), f"magnitude={magnitude}",
                           handbuilt_fishing(victim, magnitude), spec)


def closeness(f: Finding) -> float:
    """How close a finding's value came to failing: 1 at its threshold, above 1 when it failed."""
    if f.check in ("imprint_rows", "classifier_rows"):  # lower bounds
        return f.threshold / f.value if f.value > 0 else math.inf
    if f.check == "sign_balance":  # a share allowed within 0.5 ± threshold
        return abs(f.value - 0.5) / f.threshold
    return f.value / f.threshold if f.threshold > 0 else (math.inf if f.value > 0 else 0.0)


def benign_extremes(verdicts: list[tuple[str, Verdict]]) -> dict[str, tuple[Finding, str]]:
    """Per check, the benign finding that came closest to failing, and which model it belongs to."""
    out: dict[str, tuple[Finding, str]] = {}
    for where, verdict in verdicts:
        for f in verdict.findings:
            if f.check not in out or closeness(f) > closeness(out[f.check][0]):
                out[f.check] = (f, where)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", default="benchmarks/results/verify.csv")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps of the trained models")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    data = Fashion()
    rows: list[dict[str, Any]] = []
    verdicts: dict[str, list[tuple[str, Verdict]]] = {"benign": [], "malicious": []}
    cases: Callable[[], Iterator[Case]] = lambda: iter([*benign(data, args.steps), *malicious(data, args.steps)])  # noqa: E731
    print(f"{'kind':<10} {'name':<26} {'model':<24} {'strength':<28} {'acc':<8} {'suspicious':<10} failing checks")
    for case in cases():
        verdict = verify_model(case.sent, case.spec)
        verdicts[case.kind].append((f"{case.name} {case.model} {case.strength}", verdict))
        failing = " ".join(verdict.failed_checks)
        trained = case.kind == "benign" and case.name != "init"
        accuracy = f"{data.accuracy(case.sent):.3f}" if trained else ""
        row = {"kind": case.kind, "name": case.name, "model": case.model, "strength": case.strength,
               "test_accuracy": accuracy, "suspicious": verdict.suspicious, "failing_checks": failing}
        rows.append(row)
        print(f"{case.kind:<10} {case.name:<26} {case.model:<24} {case.strength:<28} {accuracy:<8}"
              f" {str(verdict.suspicious):<10} {failing}")
    with open(args.csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    benign_n, malicious_n = len(verdicts["benign"]), len(verdicts["malicious"])
    alarms = sum(v.suspicious for _, v in verdicts["benign"])
    detected = sum(v.suspicious for _, v in verdicts["malicious"])
    print(f"\nbenign models: {benign_n}, false alarms: {alarms} (false-alarm rate {alarms / benign_n:.3f})")
    print(f"malicious models: {malicious_n}, detected: {detected} (detection rate {detected / malicious_n:.3f})")
    for name in sorted({r["name"].split("/")[0] for r in rows if r["kind"] == "malicious"}):
        group = [(r, v) for r, (_, v) in zip([r for r in rows if r["kind"] == "malicious"], verdicts["malicious"],
                                             strict=True) if r["name"].split("/")[0] == name]
        weakest = min(max((closeness(f) for f in v.failed), default=0.0) for _, v in group)
        per_check: dict[str, list[float]] = {}
        for _, v in group:
            for f in v.failed:
                per_check.setdefault(f.check, []).append(closeness(f))
        checks = ", ".join(f"{c} {len(x)}× (min closeness {min(x):.3g})" for c, x in sorted(per_check.items()))
        print(f"  {name:<20} detected {sum(r['suspicious'] for r, _ in group)}/{len(group)}"
              f" (weakest: most failed check at closeness {weakest:.3g}); {checks}")
    print("benign extremes per check (value closest to the threshold, over all benign models):")
    for check, (f, where) in sorted(benign_extremes(verdicts["benign"]).items()):
        print(f"  {check:<16} value {f.value:<10.4g} threshold {f.threshold:<10.4g} closeness {closeness(f):.3f}"
              f"  {where} {f.layer or ''}")
    print("  (closeness: 1 at the threshold, > 1 failed; sign_balance allows max(0.15, 8 standard errors))")
    print(f"wrote {args.csv}; {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
