"""The audit's battery: the user's setup, one attack per family that applies, and the changes it measures.

Every *condition* is a set of ``key=value`` overrides on top of the user's configuration, run on the same
private batches (``seed`` and ``dataset.batch`` 0 … n − 1, zipped), so any two conditions form a paired
comparison (DESIGN §8). The conditions:

* ``op`` — the user's setup as given, attacked by Inverting Gradients (the registry's default keywords, the
  budget's iterations), the adaptive attacker wherever a configured defence is deterministic;
* ``gen`` — GIFD with a shipped prior, only when one fits the data (`fitting_prior`);
* ``ana`` — Robbing the Fed's imprint module, only under ``threat.server=malicious``;
* ``none`` — the user's setup without any defence: the baseline of "which change lowered leakage by how much";
* ``alone:<defence>`` — one configured defence on its own (standard and full budgets, two defences or more);
* ``stronger:<defence>:<k>`` — the setup with one defence made ``k`` times stronger (`strengthen`);
* ``lever:<name>`` — a protocol or network change the survey recommends (a larger batch, a wider network, more
  local epochs), measured like the defences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fedinvert.errors import ConfigError

PHASES = ("network design", "training protocol", "client verification")
"""The survey's three defence phases, in the order the recommendations give them."""

#: A shipped prior, the data sets whose domain it was trained on (GIFD only runs where one fits).
PRIOR_DOMAINS: dict[str, tuple[str, ...]] = {"fashion": ("fashion-mnist",), "face-dcgan": ("lfw",)}


@dataclass(frozen=True)
class Budget:
    """How much an audit measures (``--budget quick|standard|full``; each field also as ``budget.<field>=``).

    Attributes:
        batches: private batches per condition (``seed`` and ``dataset.batch`` 0 … batches − 1); DESIGN §8 asks
            for at least 8 before a difference is a claim.
        iterations: Inverting Gradients' Adam steps per restart.
        restarts: Inverting Gradients' restarts.
        gifd_steps: GIFD's steps per stage.
        gifd_restarts: GIFD's restarts.
        stronger: the factors each configured defence is strengthened by (`strengthen`).
        alone: also measure each configured defence on its own (when two or more are configured).
        levers: the survey's protocol / network changes to measure (``batch``, ``width``, ``epochs``).
        rounds: federated rounds of the accuracy measurement (`fedinvert.audit.utility`).
        clients: clients per round of the accuracy measurement.
    """

    batches: int
    iterations: int
    restarts: int
    gifd_steps: int
    gifd_restarts: int
    stronger: tuple[float, ...]
    alone: bool
    levers: tuple[str, ...]
    rounds: int
    clients: int

    def with_overrides(self, given: dict[str, Any]) -> Budget:
        """This budget with ``budget.<field>=value`` overrides applied and checked."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, value in given.items():
            if key not in known:
                raise ConfigError(f"budget.{key}: unknown budget key; known: {', '.join(sorted(known))}")
            changes[key] = _budget_value(key, value)
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def _budget_value(key: str, value: Any) -> Any:
    if key == "alone":
        if not isinstance(value, bool):
            raise ConfigError(f"budget.alone must be true or false, got {value!r}")
        return value
    if key in ("stronger", "levers"):
        items = value if isinstance(value, list) else [] if value is None else [value]
        if key == "levers":
            bad = [v for v in items if v not in LEVERS]
            if bad:
                raise ConfigError(f"budget.levers: unknown lever {bad[0]!r}; known: {', '.join(LEVERS)}")
            return tuple(str(v) for v in items)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 1 for v in items):
            raise ConfigError(f"budget.stronger must list factors > 1, e.g. [2, 4], got {value!r}")
        return tuple(float(v) for v in items)
    least = 0 if key == "rounds" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"budget.{key} must be a whole number ≥ {least}, got {value!r}")
    return value


#: The survey's protocol / network levers: name -> (phase, what it changes).
LEVERS: dict[str, tuple[str, str]] = {
    "batch": ("training protocol", "batch_size ×4"),
    "epochs": ("training protocol", "protocol.local_epochs ×2"),
    "width": ("network design", "model.width ×2"),
}

BUDGETS: dict[str, Budget] = {
    # < 10 minutes on a 2-core CPU for the Fashion-MNIST ConvNet FedAvg example with two defences
    "quick": Budget(batches=8, iterations=300, restarts=1, gifd_steps=40, gifd_restarts=1, stronger=(4.0,),
                    alone=False, levers=("batch",), rounds=60, clients=8),
    "standard": Budget(batches=8, iterations=1000, restarts=1, gifd_steps=200, gifd_restarts=2, stronger=(2.0, 4.0),
                       alone=True, levers=("batch", "epochs", "width"), rounds=200, clients=8),
    # paper scale, meant for a GPU (device=auto, the default)
    "full": Budget(batches=16, iterations=4800, restarts=2, gifd_steps=1000, gifd_restarts=4,
                   stronger=(2.0, 4.0, 8.0), alone=True, levers=("batch", "epochs", "width"), rounds=1000, clients=10),
}


@dataclass(frozen=True)
class Condition:
    """One cell of the battery: a name, what it is, and the overrides that make it from the user's setup.

    Attributes:
        key: the stable name stored in results.csv's ``condition`` column (``op``, ``none``, ``stronger:…``).
        kind: ``threat`` (an attack on the setup as given), ``baseline``, ``defence`` or ``lever``.
        label: what it is, for people (``gaussian_noise std 0.01 → 0.04``).
        overrides: ``key=value`` applied after the user's keys.
        phase: the survey's phase a change belongs to (None for threats and the baseline).
        family: ``optimization``, ``generation`` or ``analysis`` (the attack's family).
        defense: the condition's defences ``{name: params}`` (the accuracy measurement trains with them).
    """

    key: str
    kind: str
    label: str
    overrides: tuple[str, ...]
    family: str = "optimization"
    phase: str | None = None
    defense: dict[str, dict[str, Any]] = field(default_factory=dict)


def strengthen(name: str, params: dict[str, Any], factor: float) -> tuple[dict[str, Any], str] | None:
    """The parameters of defence ``name`` made ``factor`` times stronger, and what changed, or None when the
    defence has no strength to raise from its parameters (a zero noise scale, bits already at 2).

    Noise std / scale and DP-SGD's noise multiplier ×k, the clipping bound (and DP-SGD's with no noise) ÷k,
    a pruning ratio's kept fraction ÷k, quantisation bits ÷k (at least 2), secure aggregation's clients ×k.
    """
    out = dict(params)

    def times(key: str) -> str | None:
        value = float(params[key])
        if value <= 0:
            return None
        out[key] = value * factor
        return f"{key} {_num(value)} → {_num(out[key])}"

    if name in ("gaussian_noise", "laplace_noise"):
        change = times("std" if name == "gaussian_noise" else "scale")
    elif name == "dp_sgd":
        change = times("noise_multiplier")
        if change is None:
            out["max_grad_norm"] = float(params["max_grad_norm"]) / factor
            change = f"max_grad_norm {_num(params['max_grad_norm'])} → {_num(out['max_grad_norm'])}"
    elif name == "clipping":
        out["bound"] = float(params["bound"]) / factor
        change = f"bound {_num(params['bound'])} → {_num(out['bound'])}"
    elif name in ("pruning", "soteria"):
        kept = (1.0 - float(params["prune_ratio"])) / factor
        out["prune_ratio"] = round(1.0 - kept, 6)
        change = f"prune_ratio {_num(params['prune_ratio'])} → {_num(out['prune_ratio'])}"
    elif name == "quantization":
        bits = max(2, int(round(int(params["bits"]) / factor)))
        if bits >= int(params["bits"]):
            return None
        out["bits"] = bits
        change = f"bits {params['bits']} → {bits}"
    elif name == "secure_aggregation":
        out["clients"] = int(math.ceil(int(params["clients"]) * factor))
        change = f"clients {params['clients']} → {out['clients']}"
    else:
        return None
    return (out, change) if change is not None else None


def _num(value: Any) -> str:
    return format(float(value), ".4g")


def fitting_prior(cfg: dict[str, Any]) -> tuple[str | None, str]:
    """The shipped prior GIFD can use on this data, and why (or why none fits).

    A prior fits when it was trained on the data set's domain (`PRIOR_DOMAINS`); its images are resized and
    converted to the victim's size and channels by the prior adapter. Its weights must be on this machine.
    """
    from fedinvert.errors import FedinvertError
    from fedinvert.priors import PRIORS

    dataset = cfg["dataset"]["name"]
    given = cfg.get("prior")
    if given:
        return str(given["name"]), f"prior={given['name']} as given"
    for name, domains in PRIOR_DOMAINS.items():
        if dataset in domains:
            try:
                PRIORS.build(name)
            except FedinvertError as err:
                return None, f"prior {name} fits {dataset} but cannot be loaded here ({' '.join(str(err).split())})"
            return name, f"prior {name} was trained on {dataset}'s domain"
    fits = "; ".join(f"{p}: {', '.join(d)}" for p, d in PRIOR_DOMAINS.items())
    return None, f"no shipped prior was trained on {dataset}'s domain ({fits}); give prior=NAME to use one"


def _defense_text(name: str, params: dict[str, Any]) -> str:
    shown = " ".join(f"{k} {_num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
                     for k, v in params.items() if k in STRENGTH_KEYS.get(name, ()))
    return f"{name} {shown}".strip()


#: The parameters that set each defence's strength (what the text names).
STRENGTH_KEYS: dict[str, tuple[str, ...]] = {
    "gaussian_noise": ("std",), "laplace_noise": ("scale",), "clipping": ("bound",), "pruning": ("prune_ratio",),
    "soteria": ("prune_ratio",), "quantization": ("bits",), "secure_aggregation": ("clients",),
    "dp_sgd": ("noise_multiplier", "max_grad_norm"),
}


def _defense_override(defense: dict[str, dict[str, Any]]) -> str:
    import json

    return f"defense={json.dumps(defense)}"


def _ig_attack(budget: Budget, defense: dict[str, dict[str, Any]], user_attack: list[str]) -> list[str]:
    from fedinvert.defenses import DEFENSES

    adaptive = any(getattr(DEFENSES.get(n), "replayable", False) for n in defense)
    return ["attack.name=inverting_gradients", f"attack.iterations={budget.iterations}",
            f"attack.restarts={budget.restarts}", f"attack.adaptive={'true' if adaptive else 'false'}", *user_attack]


def build_battery(cfg: dict[str, Any], budget: Budget, *, user_attack: list[str],
                  defenses: dict[str, dict[str, Any]]) -> tuple[list[Condition], list[str]]:
    """The conditions of an audit of the resolved user configuration ``cfg``, and notes on what was left out.

    Args:
        cfg: the user's resolved configuration.
        budget: what to measure.
        user_attack: the user's ``attack.<key>=value`` overrides (they apply to Inverting Gradients).
        defenses: the configured defences with every public parameter resolved, in order.
    """
    notes: list[str] = []
    conditions = [Condition("op", "threat", f"Inverting Gradients, {budget.iterations} steps",
                            (_defense_override(defenses), *_ig_attack(budget, defenses, user_attack)),
                            defense=defenses)]
    prior, why = fitting_prior(cfg)
    if prior is not None:
        conditions.append(Condition(
            "gen", "threat", f"GIFD, prior {prior}, {budget.gifd_steps} steps a stage", (
                _defense_override(defenses), "attack.name=gifd", f"attack.steps_per_stage={budget.gifd_steps}",
                f"attack.restarts={budget.gifd_restarts}", f"prior={prior}"),
            family="generation", defense=defenses))
    else:
        notes.append(f"generation-based attack not run: {why}")
    if cfg["threat"]["server"] == "malicious":
        conditions.append(Condition("ana", "threat", "imprint (Robbing the Fed), malicious server", (
            _defense_override(defenses), "attack.name=imprint"), family="analysis", defense=defenses))
    else:
        notes.append("analysis-based attack not run: threat.server=honest (give threat.server=malicious to audit a"
                     " server that may modify the model)")
    if defenses:
        conditions.append(Condition("none", "baseline", "your setup without any defence",
                                    ("defense={}", *_ig_attack(budget, {}, user_attack))))
    if budget.alone and len(defenses) > 1:
        for name, params in defenses.items():
            alone = {name: params}
            conditions.append(Condition(f"alone:{name}", "defence", f"{_defense_text(name, params)} alone",
                                        (_defense_override(alone), *_ig_attack(budget, alone, user_attack)),
                                        phase="training protocol", defense=alone))
    for name, params in defenses.items():
        for factor in budget.stronger:
            found = strengthen(name, params, factor)
            if found is None:
                notes.append(f"{name} has no stronger setting at ×{_num(factor)} from {params}")
                continue
            changed = {n: (found[0] if n == name else p) for n, p in defenses.items()}
            conditions.append(Condition(f"stronger:{name}:{_num(factor)}", "defence", f"{name} {found[1]}",
                                        (_defense_override(changed), *_ig_attack(budget, changed, user_attack)),
                                        phase="training protocol", defense=changed))
    conditions += _levers(cfg, budget, defenses, user_attack, notes)
    return conditions, notes


def defense_text(defenses: dict[str, dict[str, Any]]) -> str:
    return ", ".join(_defense_text(n, p) for n, p in defenses.items()) or "no defence"


def _levers(cfg: dict[str, Any], budget: Budget, defenses: dict[str, dict[str, Any]], user_attack: list[str],
            notes: list[str]) -> list[Condition]:
    from fedinvert.models.base import model_options

    out = []
    attack = (_defense_override(defenses), *_ig_attack(budget, defenses, user_attack))
    for lever in budget.levers:
        phase, _ = LEVERS[lever]
        if lever == "batch":
            size = int(cfg["batch_size"])
            out.append(Condition("lever:batch", "lever", f"batch_size {size} → {4 * size}",
                                 (*attack, f"batch_size={4 * size}"), phase=phase, defense=defenses))
        elif lever == "epochs":
            if cfg["protocol"]["name"] != "fedavg":
                notes.append("lever epochs not measured: it needs protocol=fedavg (FedSGD has no local epochs)")
                continue
            epochs = int(cfg["protocol"].get("local_epochs", 1))
            out.append(Condition("lever:epochs", "lever", f"protocol.local_epochs {epochs} → {2 * epochs}",
                                 (*attack, f"protocol.local_epochs={2 * epochs}"), phase=phase, defense=defenses))
        elif lever == "width":
            name = cfg["model"]["name"]
            if "width" not in model_options(name):
                notes.append(f"lever width not measured: model {name} has no width option")
                continue
            width = float(cfg["model"].get("width", 1.0))
            out.append(Condition("lever:width", "lever", f"model.width {_num(width)} → {_num(2 * width)}",
                                 (*attack, f"model.width={2 * width}"), phase=phase, defense=defenses))
    return out
