"""The client's checks of a model a server sent, against the architecture it agreed to train (issue 11).

A malicious server reads inputs out of an update exactly by changing the model first (analysis-based attacks,
`fedinvert.attacks.analytic`). What each attack needs leaves a mark a client can measure before it trains:

* Robbing the Fed (``imprint``) adds a block in front of the victim: new keys, the victim's keys under a
  wrapper prefix, a linear layer that reads the raw image before the first convolution, and a weight matrix
  whose rows all measure the same thing (rank one) with sorted biases.
* Trap weights (Boenisch et al.) keep the architecture but give a linear layer rows whose negative entries are
  larger in magnitude than the positive ones (or outnumber them), so few inputs activate each ReLU row.
* Fishing (Wen et al.) keeps the architecture but zeroes (or shrinks) every classifier row except a target
  class's and sets those rows' biases to a large value, so one class dominates the batch gradient.

Thresholds. Each number below was set from the benign models of ``benchmarks/verify.py`` (random inits of
every victim in ``MODELS`` with several seeds, models trained on Fashion-MNIST, after FedAvg rounds and
fine-tuned), never from the malicious ones: each sits well outside the benign range measured there (stated
beside it), and the malicious modifications happen to fall far beyond. ``benchmarks/results/verify.log``
prints the benign extremes next to each threshold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fedinvert.errors import ConfigError
from fedinvert.verify.verdict import Finding, Verdict

RANK_RATIO_MIN = 0.05
"""``imprint_rows``: a linear weight whose second singular value is below this fraction of the first is near
rank one (its rows measure one direction). Benign minimum measured: 0.287 (an MLP's first layer fine-tuned
at lr 0.5); Robbing the Fed's block: < 1e-12."""

TRAP_EFFECT_MAX = 1.0
"""``trap_weights``: in the first linear layer, the per-row log(mean |negative| / mean positive), entries taken
about the row's median (so the location drift that training gives whole rows cancels), has a median over
rows; a trap gives every row the same skew, so that median is large next to the rows' spread. The check fails
when |median| / standard deviation over rows exceeds this (and the ratio leaves ``TRAP_RATIO_FLOOR``).
Benign maximum measured: 0.63 (a two-layer MLP fine-tuned at lr 0.5 to chance accuracy: ratio 1.22, but rows
that disagree); the registered ``trap_weights`` at rate 0.1: 3.2–3.7, hand-built traps at factor 1.2: ≥ 3.5."""

TRAP_RATIO_FLOOR = 1.05
"""``trap_weights``: a median ratio within 1/1.05–1.05 passes however consistent (a negligible skew)."""

SIGN_FLOOR = 0.15
"""``sign_balance``: the first linear layer's fraction of negative entries may stray from 1/2 by this much
(35–65 %) ... Benign extreme measured: 58.0 % (LeNet-5's first linear layer fine-tuned at lr 0.2; deeper
layers of trained ReLU networks drift further, to 77 %, which is why only the first linear layer is judged)."""

SIGN_Z = 8.0
"""``sign_balance``: ... or by this many binomial standard errors 0.5/sqrt(entries), whichever is larger."""

BIAS_SCALE_MAX = 0.25
"""``bias_scale``: the first linear layer's RMS bias over its rows' typical response to unit-scale inputs,
RMS(W)·sqrt(fan-in). A row that fires for a chosen share of the data needs its threshold inside the data's
response distribution (trap weights fold the normalisation into the bias, b = W·mean); PyTorch's init gives
exactly 1/sqrt(fan-in) and training keeps it small. Allowed: max(this, 4/sqrt(fan-in)). Benign maximum
measured: 0.104 (LeNet-5's first linear layer fine-tuned at lr 0.2); the registered ``trap_weights``: 0.43 at
rate 0.5 (where its rows are hardly skewed), 1.7 at rate 0.1."""

ROW_RATIO_MIN = 0.1
"""``classifier_rows``: the smallest classifier row norm must be at least this fraction of the largest.
Benign minimum measured: 0.32 (a LeNet-5 head fine-tuned at lr 0.5); fishing's zeroed rows: 0."""

BIAS_SPREAD_MAX = 2.0
"""``classifier_bias``: max − min of the classifier's biases in units of its mean row norm (a bias matters
next to w·f, which scales with ‖w‖). Benign maximum measured: 0.72 (LeNet-5 fine-tuned at lr 0.2; raw spreads
reach 3.3 in an MLP fine-tuned at lr 0.2, so an absolute bound would not separate); fishing at magnitude 5:
≥ 7."""

SVD_MAX_SIDE = 1024
"""``imprint_rows`` looks at no more than this many evenly spaced rows and columns of a weight matrix."""

MIN_TRAP_FAN_IN = 16
"""Linear layers with fewer inputs are too small for the sign and magnitude statistics."""

_MIN_IMAGE_PIXELS = 64  # a flattened image has at least 8 × 8 pixels per channel (fedinvert's MIN_IMAGE_SIZE)

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class Reference:
    """The agreed architecture as the checks need it.

    Attributes:
        state: its state dict (names, shapes, dtypes; the values are not compared).
        classifier: the key of its classifier's weight (the last nn.Linear), or None.
        first_linear: the key of its first nn.Linear's weight when that is not the classifier, or None.
        conv_first: True when its first layer with weights is a convolution.
        image_shape: (C, H, W) of its inputs, when known.
    """

    state: dict[str, Tensor]
    classifier: str | None
    first_linear: str | None
    conv_first: bool
    image_shape: tuple[int, int, int] | None


def _layer_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear and Conv layer in registration order."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _from_module(model: nn.Module, image_shape: tuple[int, int, int] | None) -> Reference:
    layers = _layer_order(model)
    linears = [name for name, m in layers if isinstance(m, nn.Linear)]
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return Reference(
        state=state,
        classifier=_key(linears[-1], "weight") if linears else None,
        first_linear=_key(linears[0], "weight") if len(linears) > 1 else None,
        conv_first=bool(layers) and not isinstance(layers[0][1], nn.Linear),
        image_shape=image_shape,
    )


def _from_state(state: StateDict, image_shape: tuple[int, int, int] | None) -> Reference:
    """A reference given as a state dict. The linear layers' order is the dict's order (a torch
    ``state_dict()`` keeps the registration order; a safetensors file sorts its keys, so prefer a module or a
    spec when the network has several linear layers). It counts as convolutional first when it has
    convolutions and no linear layer that could read the flattened image."""
    weights = [k for k, v in state.items() if k.endswith("weight") and v.is_floating_point() and v.dim() >= 2]
    linears = [k for k in weights if state[k].dim() == 2]
    convs = [state[k] for k in weights if state[k].dim() > 2]
    channels = min((int(c.shape[1]) for c in convs), default=None)
    reads_input = any(_input_sized(int(state[k].shape[1]), image_shape, channels) for k in linears)
    return Reference(
        state=dict(state),
        classifier=linears[-1] if linears else None,
        first_linear=linears[0] if len(linears) > 1 else None,
        conv_first=bool(convs) and not reads_input,
        image_shape=image_shape,
    )


def _from_spec(spec: Mapping[str, Any]) -> Reference:
    """A reference given as ``{"name": model, "in_channels"|"channels", "num_classes", "image_size", options}``."""
    from fedinvert.models import build_model

    options = dict(spec)
    name = options.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError("a reference spec needs 'name': a model in MODELS (e.g. convnet)")
    channels = options.pop("in_channels", options.pop("channels", None))
    shape = {"in_channels": channels, "num_classes": options.pop("num_classes", None),
             "image_size": options.pop("image_size", None)}
    for key, value in shape.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"a reference spec needs {key} as a whole number, got {value!r}")
    options.pop("seed", None)  # weights are not compared; any seed gives the same architecture
    try:
        model = build_model(name, seed=0, **shape, **options)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"model {name!r} cannot be built from {dict(options)}: {err}") from None
    size = int(shape["image_size"])
    return _from_module(model, (int(shape["in_channels"]), size, size))


def resolve_reference(reference: Any, *, image_shape: tuple[int, int, int] | None = None) -> Reference:
    """The agreed architecture from an nn.Module, a state dict or a spec dict (see `verify_model`)."""
    if isinstance(reference, nn.Module):
        return _from_module(reference, image_shape)
    if isinstance(reference, Mapping):
        if reference and all(isinstance(v, Tensor) for v in reference.values()):
            return _from_state(reference, image_shape)
        if "name" in reference:
            resolved = _from_spec(reference)
            return resolved if image_shape is None else dataclasses.replace(resolved, image_shape=image_shape)
    raise ConfigError(
        "reference must be an nn.Module of the agreed architecture, its state dict, or a spec"
        " {'name': ..., 'in_channels': ..., 'num_classes': ..., 'image_size': ..., options}"
    )


def _candidate_state(model_or_state: Any) -> dict[str, Tensor]:
    if isinstance(model_or_state, nn.Module):
        return {k: v.detach() for k, v in model_or_state.state_dict().items()}
    if isinstance(model_or_state, Mapping):
        bad = [k for k, v in model_or_state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        if bad:
            raise ConfigError(f"the received state dict maps {bad[0]!r} to something that is not a tensor")
        return dict(model_or_state)
    raise ConfigError(f"verify_model checks an nn.Module or a state dict, got {type(model_or_state).__name__}")


def _examples(keys: list[str], most: int = 3) -> str:
    shown = ", ".join(keys[:most])
    return shown + (f", … (+{len(keys) - most})" if len(keys) > most else "")


def wrapper_prefix(candidate: StateDict, reference: StateDict) -> str:
    """The prefix (e.g. ``victim.``) under which every reference key appears in ``candidate``; ``""`` when the
    reference keys appear as they are (or no single prefix holds them all)."""
    if not reference or all(k in candidate for k in reference):
        return ""
    first = next(iter(reference))
    for key in candidate:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            if all(prefix + k in candidate for k in reference):
                return prefix
    return ""


def check_architecture(candidate: StateDict, reference: Reference, prefix: str) -> Finding:
    """Keys missing or extra, shapes or dtypes changed, the agreed model wrapped under a prefix."""
    expected = {prefix + k: v for k, v in reference.state.items()}
    missing = [k for k in expected if k not in candidate]
    extra = [k for k in candidate if k not in expected]
    shapes = [k for k in expected if k in candidate and tuple(candidate[k].shape) != tuple(expected[k].shape)]
    dtypes = [k for k in expected if k in candidate and k not in shapes and candidate[k].dtype != expected[k].dtype]
    parts = []
    if prefix:
        parts.append(f"the agreed model sits inside a wrapper (its keys under '{prefix}')")
    if extra:
        parts.append(f"{len(extra)} extra keys ({_examples(extra)})")
    if missing:
        parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shapes changed ({k}: {list(candidate[k].shape)} instead of {list(expected[k].shape)})")
    if dtypes:
        k = dtypes[0]
        parts.append(f"{len(dtypes)} dtypes changed ({k}: {candidate[k].dtype} instead of {expected[k].dtype})")
    changes = len(missing) + len(extra) + len(shapes) + len(dtypes) + bool(prefix)
    reason = "; ".join(parts) if parts else f"the {len(expected)} keys, shapes and dtypes match the agreed architecture"
    return Finding("architecture", changes == 0, f"{reason} ({changes} changes, allowed 0)", float(changes), 0.0)


def check_finite(candidate: StateDict) -> Finding:
    """NaN or ±inf anywhere in the floating-point tensors."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in candidate.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    total = sum(bad.values())
    reason = (
        f"{total} non-finite values in {len(bad)} tensors ({_examples(sorted(bad))})"
        if total else "every value is finite"
    )
    return Finding("non_finite", total == 0, f"{reason} (allowed 0)", float(total), 0.0)


def _input_sized(features: int, image_shape: tuple[int, int, int] | None, channels: int | None) -> bool:
    """Whether a linear layer of ``features`` inputs could read the flattened image."""
    if image_shape is not None:
        return features == math.prod(image_shape)
    if channels is None or features % channels:
        return False
    pixels = features // channels
    return pixels >= _MIN_IMAGE_PIXELS and math.isqrt(pixels) ** 2 == pixels


def check_input_linear(
    model: nn.Module | None, candidate: StateDict, reference: Reference, prefix: str
) -> Finding | None:
    """Linear layers in front of the first convolution of a convolutional victim (None for fully connected
    references, whose first layer is linear by design).

    For a received module, the linear layers registered before its first convolution; for a state dict, the
    linear weights the reference does not have whose fan-in equals the flattened image (C·H·W).
    """
    if not reference.conv_first:
        return None
    flagged: list[str] = []
    if model is not None:
        for name, layer in _layer_order(model):
            if not isinstance(layer, nn.Linear):
                break
            flagged.append(_key(name, "weight"))
    first_conv = next((v for v in reference.state.values() if v.is_floating_point() and v.dim() > 2), None)
    channels = None if first_conv is None else int(first_conv.shape[1])
    expected = {prefix + k for k in reference.state}
    for key, value in candidate.items():
        if key in expected or key in flagged or not key.endswith("weight") or value.dim() != 2:
            continue
        if value.is_floating_point() and _input_sized(int(value.shape[1]), reference.image_shape, channels):
            flagged.append(key)
    reason = (
        f"{len(flagged)} linear layers read the input before the first convolution ({_examples(flagged)})"
        if flagged else "no linear layer before the first convolution"
    )
    return Finding("input_linear", not flagged, f"{reason} (allowed 0)", float(len(flagged)), 0.0)


def linear_weights(candidate: StateDict) -> list[str]:
    """Keys of the 2-D floating-point ``*weight`` tensors (the weight matrices of linear layers)."""
    return [k for k, v in candidate.items() if k.endswith("weight") and v.dim() == 2 and v.is_floating_point()]


def _bias(candidate: StateDict, key: str) -> Tensor | None:
    bias = candidate.get(key[: -len("weight")] + "bias")
    rows = candidate[key].shape[0]
    return bias.double() if bias is not None and bias.dim() == 1 and bias.shape[0] == rows else None


def _evenly_sampled(matrix: Tensor, most: int = SVD_MAX_SIDE) -> Tensor:
    """At most ``most`` evenly spaced rows and columns of ``matrix``: a rank-one matrix stays rank one, a benign
    one keeps its spread, and a huge received layer cannot make the SVD expensive."""
    for dim in (0, 1):
        if matrix.shape[dim] > most:
            matrix = matrix.index_select(dim, torch.linspace(0, matrix.shape[dim] - 1, most).long())
    return matrix


def check_imprint_rows(candidate: StateDict, key: str) -> Finding | None:
    """Robbing the Fed's rows: the nonzero rows of a linear weight near copies of one direction (second
    singular value s2 ≪ s1), with the biases in sorted order (increasing bin offsets)."""
    weight = candidate[key].double()
    norms = weight.norm(dim=1)
    if not bool(torch.isfinite(weight).all()) or float(norms.max()) == 0.0:
        return None
    rows = weight[norms > 1e-12 * norms.max()]
    if min(rows.shape) < 2:
        return None
    singular = torch.linalg.svdvals(_evenly_sampled(rows))
    ratio = float(singular[1] / singular[0])
    bias = _bias(candidate, key)
    order = ""
    if bias is not None and len(bias) > 2:
        steps = torch.sign(bias[1:] - bias[:-1])
        steps = steps[steps != 0]
        if len(steps):
            sorted_share = max(float((steps > 0).double().mean()), float((steps < 0).double().mean()))
            order = f"; biases in sorted order at {100 * sorted_share:.0f} % of steps"
    passed = ratio >= RANK_RATIO_MIN
    verdict = "not near rank one" if passed else f"{len(rows)} rows near copies of one direction (rank one)"
    reason = f"s2/s1 = {ratio:.3g} ({verdict}; threshold {RANK_RATIO_MIN}){order}"
    return Finding("imprint_rows", passed, reason, ratio, RANK_RATIO_MIN, key)


def _magnitude_ratio(weight: Tensor) -> Tensor:
    """Per row: mean |negative entry| / mean positive entry of the rows with at least 4 of each (others dropped)."""
    negative, positive = weight < 0, weight > 0
    usable = (negative.sum(1) >= 4) & (positive.sum(1) >= 4)
    w, neg, pos = weight[usable], negative[usable], positive[usable]
    return (w.abs() * neg).sum(1) / neg.sum(1) / ((w * pos).sum(1) / pos.sum(1))


def check_trap_weights(candidate: StateDict, key: str) -> list[Finding]:
    """Trap weights (Boenisch et al.) in the first linear layer: rows whose negative entries are consistently
    larger in magnitude than the positive ones (``trap_weights``; benign ≈ 1, measured about each row's
    median), biases that set each row's threshold inside the data's responses (``bias_scale``), or a layer
    whose entries are mostly negative (``sign_balance``; benign ≈ 1/2)."""
    weight = candidate[key].double()
    if weight.shape[1] < MIN_TRAP_FAN_IN or not bool(torch.isfinite(weight).all()):
        return []
    findings = []
    ratio = _magnitude_ratio(weight - weight.median(dim=1, keepdim=True).values)
    if len(ratio) >= 3:
        logs = ratio.log()
        median, spread = float(logs.median()), float(logs.std())
        effect = abs(median) / spread if spread > 0 else math.inf
        skewed = abs(median) > math.log(TRAP_RATIO_FLOOR)
        passed = effect <= TRAP_EFFECT_MAX or not skewed
        reason = (
            f"median |negative|/positive magnitude ratio {math.exp(median):.3f} over {len(logs)} rows (about each"
            f" row's median; benign ≈ 1), {effect:.2f} × the rows' spread (allowed {TRAP_EFFECT_MAX},"
            f" or a ratio within 1/{TRAP_RATIO_FLOOR}–{TRAP_RATIO_FLOOR})"
        )
        findings.append(Finding("trap_weights", passed, reason, effect, TRAP_EFFECT_MAX, key))
    bias = _bias(candidate, key)
    response = float(weight.pow(2).mean().sqrt()) * math.sqrt(weight.shape[1])
    if bias is not None and bool(torch.isfinite(bias).all()) and response > 0:
        scale = float(bias.pow(2).mean().sqrt()) / response
        allowed = max(BIAS_SCALE_MAX, 4 / math.sqrt(weight.shape[1]))
        reason = (
            f"RMS bias {scale:.3g} × the rows' response scale RMS(W)·sqrt(fan-in) = {response:.3g}"
            f" (init: 1/sqrt(fan-in) = {1 / math.sqrt(weight.shape[1]):.3g}; allowed {allowed:.3g})"
        )
        findings.append(Finding("bias_scale", scale <= allowed, reason, scale, allowed, key[: -len("weight")] + "bias"))
    signed = int((weight != 0).sum())
    if signed:
        share = float((weight < 0).sum()) / signed
        allowed = max(SIGN_FLOOR, SIGN_Z * 0.5 / math.sqrt(signed))
        passed = abs(share - 0.5) <= allowed
        reason = f"{100 * share:.1f} % of the nonzero entries negative (benign ≈ 50 %, allowed ±{100 * allowed:.1f})"
        findings.append(Finding("sign_balance", passed, reason, share, allowed, key))
    return findings


def check_classifier(candidate: StateDict, key: str) -> list[Finding]:
    """Fishing (Wen et al.) in the classifier: rows zeroed or shrunk beside one dominating row
    (``classifier_rows``), biases spread far apart next to the rows' size (``classifier_bias``)."""
    weight = candidate[key].double()
    if not bool(torch.isfinite(weight).all()) or weight.shape[0] < 2:
        return []
    norms = weight.norm(dim=1)
    largest = float(norms.max())
    ratio = float(norms.min()) / largest if largest > 0 else 0.0
    small = int((norms < ROW_RATIO_MIN * largest).sum())
    reason = (
        f"smallest/largest row norm {ratio:.3g}; {small} of {len(norms)} rows below {ROW_RATIO_MIN} of the"
        f" largest (row {int(norms.argmax())})"
    )
    findings = [Finding("classifier_rows", ratio >= ROW_RATIO_MIN, reason, ratio, ROW_RATIO_MIN, key)]
    bias = _bias(candidate, key)
    if bias is not None and bool(torch.isfinite(bias).all()):
        spread = float(bias.max() - bias.min())
        scale = float(norms.mean())
        relative = spread / scale if scale > 0 else math.inf
        reason = (
            f"bias spread max − min = {spread:.3g} = {relative:.3g} × the mean row norm {scale:.3g}"
            f" (max {float(bias.max()):.3g} at class {int(bias.argmax())}; allowed {BIAS_SPREAD_MAX} ×)"
        )
        findings.append(Finding("classifier_bias", relative <= BIAS_SPREAD_MAX, reason, relative, BIAS_SPREAD_MAX,
                                key[: -len("weight")] + "bias"))
    return findings


def verify_model(
    model_or_state: nn.Module | StateDict,
    reference: nn.Module | Mapping[str, Any],
    *,
    image_shape: tuple[int, int, int] | None = None,
) -> Verdict:
    """Check a model received from the server against the agreed architecture, before training on it.

    Runs every check of this module (architecture, non-finite values, linear layers before the first
    convolution, imprint-like rows, trap-weight statistics, fishing's classifier) and returns their findings;
    the verdict is suspicious when any failed. No forward pass, no data: cheap enough to run in a client
    before every round.

    Args:
        model_or_state: the received model, or its state dict (e.g. a run's ``sent_model.safetensors``).
        reference: the agreed architecture: an nn.Module, its state dict, or a spec dict
            ``{"name": "convnet", "in_channels": 1, "num_classes": 10, "image_size": 28, **model options}``
            that `fedinvert.models.build_model` accepts. Only names, shapes and dtypes of its state are used.
        image_shape: (C, H, W) of the inputs, when the reference does not give it (a spec does); sharpens
            the ``input_linear`` check on state dicts.

    Raises:
        ConfigError: the reference or the received object is neither a module nor a state dict / spec.
    """
    module = model_or_state if isinstance(model_or_state, nn.Module) else None
    candidate = _candidate_state(model_or_state)
    ref = resolve_reference(reference, image_shape=image_shape)
    prefix = wrapper_prefix(candidate, ref.state)
    findings = [check_architecture(candidate, ref, prefix), check_finite(candidate)]
    input_linear = check_input_linear(module, candidate, ref, prefix)
    if input_linear is not None:
        findings.append(input_linear)
    for key in linear_weights(candidate):
        imprint = check_imprint_rows(candidate, key)
        if imprint is not None:
            findings.append(imprint)
    # traps sit in the first linear layer (deeper ones legitimately drift under training; see SIGN_FLOOR)
    first = None if ref.first_linear is None else prefix + ref.first_linear
    if first is not None and first in candidate and candidate[first].dim() == 2:
        findings.extend(check_trap_weights(candidate, first))
    classifier = None if ref.classifier is None else prefix + ref.classifier
    if classifier is not None and classifier in candidate and candidate[classifier].dim() == 2:
        findings.extend(check_classifier(candidate, classifier))
    return Verdict(tuple(findings))
