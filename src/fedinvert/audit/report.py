"""The audit's outputs once its runs are stored: accuracy costs, the received model's verdict, and the files
``audit.txt`` (printed), ``audit.json``, ``audit.html`` (self-contained) and ``report.html`` (every run)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedinvert.audit.battery import defense_text
from fedinvert.audit.findings import build_findings, findings_json, summary_lines
from fedinvert.audit.utility import FEDSGD_SERVER_LR, Utility, measurable, measure
from fedinvert.errors import FedinvertError

if TYPE_CHECKING:
    from fedinvert.audit import AuditPlan
    from fedinvert.sweep import SweepSummary

log = logging.getLogger(__name__)

FILES = ["audit.txt", "audit.html", "audit.json", "report.html", "results.csv"]


def _utilities(plan: AuditPlan) -> tuple[dict[str, Utility], str]:
    """Each condition's accuracy after the measured training, from DIR/utility.json where already measured."""
    from fedinvert.audit import UTILITY
    from fedinvert.pretrain import TEST_IMAGES
    from fedinvert.sweep.store import atomic_write

    budget = plan.budget
    reason = measurable(plan.config)
    if reason is not None:
        return {}, reason
    if budget.rounds == 0:
        return {}, "not measured (budget.rounds=0)"
    cache_file = plan.folder / UTILITY
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8")) if cache_file.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    found: dict[str, Utility] = {}
    for condition in plan.conditions:
        if condition.kind == "threat" and condition.key != "op":
            continue  # the same defences as the setup: the same training
        cfg = plan.condition_runs(condition.key)[0].config
        material = json.dumps({"cfg": {k: v for k, v in cfg.items() if k not in ("attack", "out", "progress")},
                               "defense": condition.defense, "rounds": budget.rounds, "clients": budget.clients},
                              sort_keys=True, default=str)
        key = hashlib.sha256(material.encode()).hexdigest()[:16]
        if key in cache:
            found[condition.key] = Utility.from_dict(cache[key])
            continue
        try:
            found[condition.key] = measure(cfg, condition.defense, rounds=budget.rounds, clients=budget.clients)
        except FedinvertError as err:
            log.warning("accuracy of %s not measured: %s", condition.key, err)
            continue
        cache[key] = found[condition.key].as_dict()
        atomic_write(cache_file, json.dumps(cache) + "\n")
    step = "the mean weight delta applied as it is" if plan.config["protocol"]["name"] == "fedavg" else \
        f"an SGD step of {FEDSGD_SERVER_LR} along the mean gradient"
    method = (f"top-1 on {TEST_IMAGES} test images after {budget.rounds} federated rounds of {budget.clients}"
              f" clients × batch_size train images, your protocol and each condition's defences, server: {step};"
              " batch-norm statistics recalibrated; differences paired over the test images (fedinvert.audit.utility)")
    return found, method


def _model_spec(plan: AuditPlan, meta: dict[str, Any]) -> dict[str, Any]:
    from fedinvert.config.validation import VICTIM_TRAINING

    options = {k: v for k, v in plan.config["model"].items() if k != "name" and k not in VICTIM_TRAINING}
    channels, size, _ = meta["image_shape"]
    return {"name": plan.config["model"]["name"], "in_channels": channels, "num_classes": meta["num_classes"],
            "image_size": size, **options}


def _observation_meta(folder: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(folder / "observation.safetensors"), framework="pt", device="cpu") as handle:
        meta = handle.metadata() or {}
    return json.loads(meta.get("fedinvert", "{}"))  # type: ignore[no-any-return]


def _verify(plan: AuditPlan, folders: dict[str, Path], leak: dict[str, str]) -> list[dict[str, Any]]:
    """verify-model's checks on the model the client receives in the setup (and from the malicious server)."""
    from safetensors.torch import load_file

    from fedinvert.verify import read_state, verify_model

    out: list[dict[str, Any]] = []
    op = folders.get("op")
    if op is None:
        return [{"model": "received", "line": "verify-model not run: no finished run of your setup"}]
    meta = _observation_meta(op)
    spec = _model_spec(plan, meta)
    received = {k[len("model."):]: v for k, v in load_file(str(op / "observation.safetensors")).items()
                if k.startswith("model.")}
    items = [("received", "the model your clients receive (the global weights of your setup)", received)]
    ana = folders.get("ana")
    if ana is not None and (ana / "sent_model.safetensors").is_file():
        items.append(("malicious", "the model the malicious server sent (imprint)",
                      read_state(ana / "sent_model.safetensors")))
    for name, what, state in items:
        try:
            verdict = verify_model(state, spec, image_shape=tuple(meta["image_shape"]))
        except FedinvertError as err:
            out.append({"model": name, "line": f"verify-model on {what}: could not run ({err})"})
            continue
        total = len(verdict.findings)
        if verdict.suspicious:
            line = (f"verify-model on {what}: SUSPICIOUS ({len(verdict.failed)} of {total} findings failed:"
                    f" {', '.join(verdict.failed_checks)}); a client that refuses it stops that attack"
                    f" ({leak.get('ana', 'its leakage above')})")
        else:
            line = f"verify-model on {what}: clean (all {total} findings passed)"
        out.append({"model": name, "suspicious": verdict.suspicious, "line": line,
                    "findings": [{"check": f.check, "passed": f.passed, "layer": f.layer, "reason": f.reason}
                                 for f in verdict.findings]})
    if ana is None:
        out.append({"model": "note", "line": "no malicious model was audited (threat.server=honest): the checks"
                    " above say the received architecture is the agreed one"})
    return out


def _model_notes(plan: AuditPlan, meta: dict[str, Any]) -> list[str]:
    from torch import nn

    from fedinvert.models import build_model

    spec = _model_spec(plan, meta)
    name = spec.pop("name")
    try:
        model = build_model(name, **spec)
    except FedinvertError:
        return []
    sigmoids = sum(isinstance(m, nn.Sigmoid) for m in model.modules())
    parameters = sum(p.numel() for p in model.parameters())
    if sigmoids:
        return [f"your model {name} has {sigmoids} sigmoid activation(s): the survey's advice is ReLU (sigmoid"
                " victims are far easier to invert)"]
    return [f"your model {name} ({parameters:,} parameters) uses no sigmoid activation"]


def _header(plan: AuditPlan, done: SweepSummary, seconds: float, meta: dict[str, Any]) -> list[str]:
    from fedinvert.config import resolve_keywords
    from fedinvert.runner import PROTOCOLS

    cfg = plan.config
    given = {k: v for k, v in cfg["protocol"].items() if k != "name"}
    factory = PROTOCOLS[cfg["protocol"]["name"]]
    resolved = resolve_keywords("protocol", cfg["protocol"]["name"], factory, given)
    proto = {k: v for k, v in resolved.items() if k not in ("shuffle_seed", "momentum")}
    proto_text = ", ".join(f"{k} {v}" for k, v in proto.items())
    c, h, _ = meta.get("image_shape", (None, None, None))
    threat = cfg["threat"]
    return [
        f"fedinvert audit (budget {plan.budget_name}): {plan.budget.batches} private batches per condition,"
        f" {done.total} runs ({done.already} already stored, {done.finished} now, {done.failed} failed), {seconds:.0f} s in this invocation",
        f"setup: model {cfg['model']['name']}, dataset {cfg['dataset']['name']} ({h} px, {c} ch), batch_size"
        f" {cfg['batch_size']}, protocol {cfg['protocol']['name']} ({proto_text}), defences"
        f" {defense_text(plan.conditions[0].defense)}; server {threat['server']}, labels {threat['labels']}",
    ]


def write_outputs(plan: AuditPlan, done: SweepSummary, t0: float) -> list[str]:
    """Measure, verify and write every output file; return audit.txt's lines."""
    from fedinvert.report.study import load_study, write_report
    from fedinvert.sweep.store import atomic_write

    study = load_study(plan.folder)
    folders = {}
    for row in study.rows:
        key = row.values.get("condition", "")
        if row.ok and row.folder is not None and key not in folders:
            folders[key] = row.folder
    meta = _observation_meta(folders["op"]) if "op" in folders else {}
    utilities, method = _utilities(plan)
    chance = 1.0 / meta["num_classes"] if meta.get("num_classes") else None
    findings = build_findings([], plan.conditions, study.rows, utilities, [], list(plan.notes), chance=chance,
                              accuracy_method=method, model_notes=_model_notes(plan, meta) if meta else [])
    ana = findings.results.get("ana")
    leak = {} if ana is None or ana.leakage is None else {"ana": f"imprint leakage {ana.leakage.mean:+.2f} dB"}
    findings.verify = _verify(plan, folders, leak)
    findings.recommendations["client verification"][:0] = [v["line"] for v in findings.verify]
    findings.recommendations["client verification"] = list(dict.fromkeys(findings.recommendations["client verification"]))
    findings.header = _header(plan, done, time.perf_counter() - t0, meta)
    lines = summary_lines(findings, chance=chance, files=FILES)
    text = "\n".join(lines) + "\n"
    atomic_write(plan.folder / "audit.txt", text)
    data = {"command": " ".join(plan.command), "budget": {"name": plan.budget_name, **plan.budget.as_dict()},
            "config": plan.config, "header": findings.header, **findings_json(findings), "summary": lines}
    atomic_write(plan.folder / "audit.json", json.dumps(data, indent=2, default=str) + "\n")
    write_report(plan.folder)
    from fedinvert.audit.page import render_audit

    atomic_write(plan.folder / "audit.html", render_audit(findings, lines, folders))
    return lines


__all__ = ["write_outputs"]
