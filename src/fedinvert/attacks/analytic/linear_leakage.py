"""Linear-layer leakage (Phong et al., "Privacy-preserving deep learning via additively homomorphic
encryption", 2017; survey's ANA-GIA family): the input of a fully connected layer read out of its gradient.

For a layer ``z = W x + b`` and one sample, dL/dW_i = (dL/dz_i) x and dL/db_i = dL/dz_i, so every row with a
nonzero bias gradient holds the input exactly: x = (dL/dW_i) / (dL/db_i). For a batch whose labels are unique
the classifier's rows mix the samples only through the softmax probabilities, which the server can compute
from the features themselves; a fixed-point iteration on that system returns every sample's penultimate
features exactly (see `unique_label_features`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedinvert.attacks.base import ATTACKS, Attack, batch_size_of
from fedinvert.attacks.labels import infer_labels
from fedinvert.errors import ConfigError
from fedinvert.observation import Observation, Reconstruction


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` of ``model`` that has a trainable bias, as (module name, module), in module order."""
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and m.bias is not None and m.bias.requires_grad and m.weight.requires_grad
    ]


def signal_rows(bias_grad: Tensor, tolerance: float) -> Tensor:
    """Indices of the rows whose |bias gradient| exceeds ``tolerance`` × the largest one: the rows some input
    reached (ReLU-dead rows carry no signal). Empty when every bias gradient is zero."""
    scale = bias_grad.abs().max()
    if not bool(scale > 0):
        return torch.zeros(0, dtype=torch.long, device=bias_grad.device)
    return (bias_grad.abs() > tolerance * scale).nonzero().flatten()


def padded_images(obs: Observation, found: Tensor, size: int) -> Tensor:
    """``size`` images in [0, 1]: the ``found`` inputs (n ≤ size, in the victim's normalised space, any shape of
    n · C·H·W values) first, then the normalisation mean — the guess that reads nothing — for the other slots."""
    inputs = torch.zeros(size, *obs.image_shape, dtype=torch.float64)
    if len(found):
        inputs[: len(found)] = found.reshape(-1, *obs.image_shape)
    return obs.denormalize(inputs.float()).clamp(0, 1)


def linear_layer_input(weight_grad: Tensor, bias_grad: Tensor, *, tolerance: float = 1e-6) -> Tensor | None:
    """The input x of a linear layer that saw one sample, from its gradients dL/dW = g xᵀ and dL/db = g.

    Least squares over the rows whose bias gradient exceeds ``tolerance`` × the largest one:
    x = Σ_i g_i (dL/dW_i) / Σ_i g_i², which equals the row ratio dL/dW_i / dL/db_i of each row when the
    update came from one sample. Scale-free, so a FedAvg weight delta of one local step works as well.

    Args:
        weight_grad: (out, in) gradient (or weight delta) of the layer's weight.
        bias_grad: (out,) gradient (or delta) of its bias.
        tolerance: relative threshold on |dL/db_i| below which a row carries no signal (ReLU-dead rows).

    Returns:
        (in,) the recovered input, or None when every bias gradient is (near) zero.
    """
    rows = signal_rows(bias_grad, tolerance)
    if not len(rows):
        return None
    g = bias_grad[rows].double()
    return ((g @ weight_grad[rows].double()) / (g * g).sum()).to(weight_grad.dtype)


def unique_label_features(
    layer: nn.Linear,
    weight_grad: Tensor,
    labels: Tensor,
    *,
    iterations: int = 100,
    tolerance: float = 1e-10,
) -> tuple[Tensor, float, int]:
    """Each sample's input to the classifier ``layer`` when no two samples share a label (cross-entropy, mean).

    The classifier's gradient is dL/dW = Aᵀ H with H the (B, F) features and A = (softmax(H Wᵀ + b) − Y) / B.
    Starting from the per-class row ratios, alternate A ← A(H) and H ← least squares of Aᵀ H = dL/dW; when
    the labels are unique A has full rank and the fixed point is the true H (to float precision).

    Args:
        layer: the classifier (the last linear layer, whose outputs are the logits).
        weight_grad: (C, F) its weight gradient.
        labels: (B,) the batch's labels, all different, B ≤ C.
        iterations: maximum fixed-point steps.
        tolerance: stop when the relative change of H falls below this.

    Returns:
        (B, F) features in label order, the relative residual ‖Aᵀ H − dL/dW‖ / ‖dL/dW‖, and the steps done.
    """
    if len(set(labels.tolist())) != len(labels):
        raise ConfigError("unique_label_features needs a batch whose labels are all different")
    weight = layer.weight.detach().double()
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
    gw = weight_grad.detach().double()
    size = len(labels)
    onehot = torch.nn.functional.one_hot(labels, weight.shape[0]).double()
    # start: the sample's own class row, as if no other sample contributed to it
    a = (torch.softmax(torch.zeros(size, weight.shape[0], dtype=gw.dtype), 1) - onehot) / size
    features = torch.linalg.lstsq(a.T, gw).solution
    done = 0
    while done < iterations:
        a = (torch.softmax(features @ weight.T + bias, 1) - onehot) / size
        new = torch.linalg.lstsq(a.T, gw).solution
        change = float((new - features).norm() / new.norm().clamp_min(1e-30))
        features, done = new, done + 1
        if change < tolerance:
            break
    a = (torch.softmax(features @ weight.T + bias, 1) - onehot) / size
    residual = float((a.T @ features - gw).norm() / gw.norm().clamp_min(1e-30))
    return features.to(weight_grad.dtype), residual, done


def image_layer(model: nn.Module, image_shape: tuple[int, int, int]) -> str | None:
    """The name of the linear layer that receives the flattened input image itself, if one does (found by
    running one random (1, C, H, W) input through ``model`` and comparing each linear layer's input with it)."""
    probe = torch.randn((1, *image_shape), generator=torch.Generator().manual_seed(0))
    seen: dict[str, Tensor] = {}
    handles = [
        m.register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, args[0].detach()))
        for name, m in linear_layers(model)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(probe.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    flat = probe.flatten()
    return next((n for n, x in seen.items() if x.numel() == flat.numel() and torch.equal(x.flatten().cpu(), flat)), None)


@ATTACKS.register("linear_leakage")
class LinearLeakage(Attack):
    """Exact recovery of fully connected layers' inputs from their weight and bias gradients.

    - Batch of one: every linear layer with a bias gives its input (row ratio); when the first layer sees the
      flattened image (``model=mlp``), that input is the image.
    - Batch with unique labels (B ≤ classes, gradients): the classifier gives every sample's penultimate
      features (`unique_label_features`); when the classifier is also the first layer, the images.

    Recovered features are returned in ``extras["features"]`` (layer name → (B, F) tensor) with their relative
    residuals in ``extras["residuals"]``. Where no image can be read out (a convolutional first layer, or a
    batch beyond what the layer reveals), the returned images are the normalisation mean (the no-knowledge
    guess) and ``extras["images_recovered"]`` is False.

    Args:
        labels: label inference method (``auto``: known labels if granted, iDLG at B = 1, count-aware otherwise).
        tolerance: relative bias-gradient threshold below which a row is treated as dead (0 ≤ tolerance < 1).
        iterations: fixed-point steps of the unique-label solver (≥ 1).
    """

    def __init__(
        self,
        *,
        labels: str = "auto",
        tolerance: float = 1e-6,
        iterations: int = 100,
        device: str | torch.device = "auto",
        log_every: int = 50,
    ) -> None:
        super().__init__(device=device, log_every=log_every)
        if not 0 <= tolerance < 1:
            raise ConfigError(f"attack.tolerance must lie in [0, 1), got {tolerance}")
        if iterations < 1:
            raise ConfigError(f"attack.iterations must be ≥ 1, got {iterations}")
        self.labels = labels
        self.tolerance = float(tolerance)
        self.iterations = int(iterations)

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        size = batch_size_of(obs)
        labels = infer_labels(obs, method=self.labels, batch_size=size)
        layers = linear_layers(obs.model)
        if not layers:
            raise ConfigError(f"linear_leakage needs a linear layer with a bias; {type(obs.model).__name__} has none")
        features: dict[str, Tensor] = {}
        residuals: dict[str, float] = {}
        steps = 0
        for name, _layer in layers if size == 1 else ():
            gw, gb = obs.update[f"{name}.weight"].cpu(), obs.update[f"{name}.bias"].cpu()
            x = linear_layer_input(gw, gb, tolerance=self.tolerance)
            steps += 1
            if x is not None:
                features[name] = x[None]
                fit = torch.outer(gb.double(), x.double())
                residuals[name] = float((fit - gw.double()).norm() / gw.double().norm().clamp_min(1e-30))
        head_name, head = layers[-1]
        unique = len(set(labels.tolist())) == size <= head.out_features
        if size > 1 and unique and obs.kind == "gradient":
            h, residual, done = unique_label_features(
                head, obs.update[f"{head_name}.weight"].cpu(), labels, iterations=self.iterations
            )
            features[head_name], residuals[head_name] = h, residual
            steps += done
        first = image_layer(obs.model, obs.image_shape)
        found = features.get(first) if first is not None else None
        recovered = found is not None
        images = padded_images(obs, torch.zeros(0) if found is None else found, size)
        score = max(residuals.values()) if residuals else float("inf")
        return Reconstruction(
            images=images.to(self.device),
            labels=labels,
            score=score,
            iterations=max(1, steps),
            extras={"features": features, "residuals": residuals, "images_recovered": recovered,
                    "image_layer": first},
        )
