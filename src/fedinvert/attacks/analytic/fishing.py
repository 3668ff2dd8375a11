"""Class fishing (Wen et al., "Fishing for user data in large-batch federated learning via gradient
magnification", ICML 2022): a malicious server changes the classifier it sends so that one class's samples
alone shape the update, then inverts that update as if the batch held one image.

The classifier z = W h + b gets every row but the target class c's set to zero and those rows' biases set to a
large ``magnitude`` M. Then every sample's logit for c sits far below the others, p_nc ≈ e^(z_c − M) / (C − 1),
and the gradient that flows into the network below the classifier is
(1/B) Σ_n (p_nc − y_nc) W_c ∂h_n/∂θ ≈ −(1/B) Σ_{n: y_n = c} W_c ∂h_n/∂θ: the other samples' share vanishes.
When one sample of the batch has class c, the update of every layer below the classifier is that sample's own
gradient (up to the factor 1/B, which cosine matching ignores), and a one-image optimisation attack on the
sent model recovers it at any batch size. The classifier's own update is left out of the matching: its
non-target rows still carry every sample's features. The bias gradient of row c tells the server how many
samples of class c the batch held (≈ −B · dL/db_c).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from fedinvert.attacks.analytic.linear_leakage import padded_images
from fedinvert.attacks.base import ATTACKS, Attack, ServerContext, batch_size_of
from fedinvert.errors import ConfigError, ObservationError
from fedinvert.observation import Capability, Observation, Reconstruction


def classifier(model: nn.Module, num_classes: int) -> tuple[str, nn.Linear]:
    """The model's last ``nn.Linear`` with a bias and ``num_classes`` outputs (its logits); ConfigError if none."""
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and m.bias is not None and m.out_features == num_classes]
    if not found:
        raise ConfigError(f"attack 'fishing' needs a final linear layer with {num_classes} outputs and a bias")
    return found[-1]


@ATTACKS.register("fishing")
class Fishing(Attack):
    """Wen et al.'s class fishing: the classifier isolates the samples of ``target_class``, and Inverting
    Gradients (cosine distance, TV prior, ``iterations`` steps) reconstructs the one such sample.

    Needs a malicious server (``threat.server=malicious``) and the batch size (to count the target's samples).
    Returns B images: the fished image first, the normalisation mean for the other B − 1 (the attack reads
    nothing about them). ``extras`` records the target class, the counted samples of it and the inner run.

    Args:
        target_class: the class whose sample is fished (0 ≤ c < num_classes).
        magnitude: bias M of the non-target rows (> 0); larger M silences the other samples more.
        iterations, restarts, lr, tv: the inner Inverting Gradients run on the isolated sample.
        compile: compile the inner attack's step.
    """

    requires = frozenset({Capability.MALICIOUS_MODEL})

    def __init__(
        self,
        *,
        target_class: int = 0,
        magnitude: float = 10.0,
        iterations: int = 1000,
        restarts: int = 1,
        lr: float = 0.1,
        tv: float = 1e-2,
        compile: bool = False,
        device: str | torch.device = "auto",
        log_every: int = 50,
    ) -> None:
        super().__init__(device=device, log_every=log_every)
        if int(target_class) < 0:
            raise ConfigError(f"attack.target_class must be ≥ 0, got {target_class}")
        if not magnitude > 0 or not math.isfinite(magnitude):
            raise ConfigError(f"attack.magnitude must be a positive number, got {magnitude}")
        self.target_class = int(target_class)
        self.magnitude = float(magnitude)
        # the inner attack validates its own keywords
        self.inner = ATTACKS.build("inverting_gradients", iterations=iterations, restarts=restarts, lr=lr, tv=tv,
                                   compile=compile, device=device, log_every=log_every)

    def _check_class(self, num_classes: int) -> None:
        if self.target_class >= num_classes:
            raise ConfigError(f"attack.target_class must be < {num_classes} (the classes), got {self.target_class}")

    def modify_model(self, model: nn.Module, context: ServerContext) -> nn.Module:
        self._check_class(context.num_classes)
        sent = copy.deepcopy(model)
        _, head = classifier(sent, context.num_classes)
        others = torch.arange(head.out_features) != self.target_class
        with torch.no_grad():
            head.weight[others] = 0.0
            head.bias[others] = self.magnitude
        return sent

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        size = batch_size_of(obs)
        self._check_class(obs.num_classes)
        try:
            name, _ = classifier(obs.model, obs.num_classes)
        except ConfigError as err:
            raise ObservationError(str(err)) from None
        prefix = f"{name}." if name else ""
        counted = -float(obs.update[f"{prefix}bias"][self.target_class]) * size
        model = copy.deepcopy(obs.model)
        _, head = classifier(model, obs.num_classes)
        for p in head.parameters():
            p.requires_grad_(False)
        update = {n: obs.update[n] for n, p in model.named_parameters() if p.requires_grad}
        if not update:
            raise ObservationError("the model has no parameters below its classifier: nothing to fish from")
        isolated = Observation(
            model=model, update=update, kind=obs.kind, image_shape=obs.image_shape, num_classes=obs.num_classes,
            normalization=obs.normalization, batch_size=1, labels=torch.tensor([self.target_class]),
            local_training=obs.local_training, defenses=obs.defenses, loss=obs.loss,
        )
        inner = self.inner.reconstruct(isolated, rng=rng, progress=progress)
        rest = padded_images(obs, torch.zeros(0), size - 1).to(inner.images.device)
        return Reconstruction(
            images=torch.cat([inner.images[:1].clamp(0, 1), rest]),
            labels=None,
            score=inner.score,
            history=inner.history,
            iterations=inner.iterations,
            interrupted=inner.interrupted,
            extras={"target_class": self.target_class, "target_count": counted,
                    "isolated": bool(abs(counted - 1) < 0.5), "inner": inner.extras},
        )
