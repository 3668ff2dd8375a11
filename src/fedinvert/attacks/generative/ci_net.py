"""CI-Net (Zhang et al., "Generative Gradient Inversion via Over-Parameterized Networks in Federated Learning",
ICCV 2023): the image batch is the output of an untrained, over-parameterised generator on a fixed input, and
the attack optimises the generator's *parameters* until that output's gradient matches the observed one.

No pretrained prior is needed: the generator's architecture (upsampling convolutions) is the only image prior,
as in Deep Image Prior. The TPAMI GIA survey (Guo et al. 2025) evaluates it as the "generator parameters"
sub-family of GEN-GIA and finds that it recovers images from sigmoid victims and fails on ReLU ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedinvert.attacks import compilation
from fedinvert.attacks.base import ATTACKS, Attack, batch_size_of, optimize
from fedinvert.attacks.labels import infer_labels
from fedinvert.attacks.objectives import FEDAVG_MODES, GradientMatcher, total_variation
from fedinvert.errors import ConfigError
from fedinvert.observation import Observation, Reconstruction


class ImageGenerator(nn.Module):
    """The over-parameterised generator CI-Net optimises: fixed code (B, code) → B images in [0, 1].

    A linear layer to ``width`` channels at a quarter of the resolution, two blocks of ×2 nearest upsampling,
    3×3 convolution and LeakyReLU (``width`` then ``width/2`` channels), a 3×3 convolution to C channels and a
    sigmoid; resized to (H, W) when they are not multiples of 4. No normalisation layers, so it runs per restart
    under `torch.func` without buffers.
    """

    def __init__(self, *, image_shape: tuple[int, int, int], code: int = 128, width: int = 128) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        self.image_shape = image_shape
        self.base = (max(1, math.ceil(height / 4)), max(1, math.ceil(width_px / 4)))
        self.width = width
        self.fc = nn.Linear(code, width * self.base[0] * self.base[1])
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width // 2, 3, padding=1)
        self.out = nn.Conv2d(width // 2, channels, 3, padding=1)

    def forward(self, code: Tensor) -> Tensor:
        x = F.leaky_relu(self.fc(code), 0.2).view(-1, self.width, *self.base)
        x = F.leaky_relu(self.conv1(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
        x = F.leaky_relu(self.conv2(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
        x = torch.sigmoid(self.out(x))
        size = self.image_shape[1:]
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


@ATTACKS.register("ci_net")
class CINet(Attack):
    """CI-Net: gradient matching over the parameters of an untrained generator with a fixed input.

    Each restart draws its own generator initialisation and its own fixed code (B × ``code``, standard normal);
    Adam (``lr``) on all of the generator's weights minimises the cosine gradient distance plus ``tv``·TV of
    the rendered batch; the restart with the least distance is returned. ``iterations`` counts gradient
    evaluations (steps × restarts).

    Args:
        steps: Adam steps per restart (2000).
        restarts: independent generators (1).
        lr: Adam learning rate on the generator's weights (1e-3).
        schedule: learning-rate schedule (``constant``; ``cosine``, ``step``, ``ramp``).
        width: the generator's channel width (128); its parameter count grows with width².
        code: size of each image's fixed input code (128).
        tv: total-variation weight on the victim's input (1e-4).
        distance: gradient distance (``cosine``; ``l2``, ``layer_cosine``).
        labels: label inference (``auto``, ``idlg``, ``row_sum``, ``row_min``, ``count_aware``, ``known``).
        fedavg: how a FedAvg weight delta is matched (``strong``, ``weak``, ``none``; see `GradientMatcher`).
        compile: ``auto``, ``true`` or ``false``.
    """

    def __init__(
        self,
        *,
        steps: int = 2000,
        restarts: int = 1,
        lr: float = 1e-3,
        schedule: str = "constant",
        width: int = 128,
        code: int = 128,
        tv: float = 1e-4,
        distance: str = "cosine",
        labels: str = "auto",
        fedavg: str = "strong",
        compile: bool | str = "auto",
        device: str | torch.device = "auto",
        log_every: int = 50,
    ) -> None:
        super().__init__(device=device, log_every=log_every)
        for key, value in (("steps", steps), ("restarts", restarts), ("width", width), ("code", code)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"attack.{key} must be a positive integer, got {value!r}")
        if width < 2:
            raise ConfigError(f"attack.width must be at least 2, got {width}")
        if not lr > 0 or not math.isfinite(lr):
            raise ConfigError(f"attack.lr must be a positive number, got {lr!r}")
        if not tv >= 0 or not math.isfinite(tv):
            raise ConfigError(f"attack.tv must be a non-negative number, got {tv!r}")
        if fedavg not in FEDAVG_MODES:
            raise ConfigError(f"attack.fedavg must be one of {', '.join(FEDAVG_MODES)}, got {fedavg!r}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.lr = float(lr)
        self.schedule = schedule
        self.width = int(width)
        self.code = int(code)
        self.tv = float(tv)
        self.distance = distance
        self.labels = labels
        self.fedavg = fedavg
        self.compile = compilation.check_setting(compile)

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        size = batch_size_of(obs)
        labels = infer_labels(obs, method=self.labels, batch_size=size).to(self.device)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng))
        generators = []
        with torch.random.fork_rng(devices=[]):  # each restart its own initialisation, reproducible from rng
            for r in range(self.restarts):
                torch.manual_seed(seed + r)
                generators.append(ImageGenerator(image_shape=obs.image_shape, code=self.code, width=self.width))
        template = generators[0].to(self.device)
        names = [n for n, _ in template.named_parameters()]
        stacked = [torch.stack([dict(g.named_parameters())[n].detach() for g in generators]).to(self.device)
                   for n in names]
        codes = torch.randn((self.restarts, size, self.code), generator=rng).to(self.device)

        def images01(weights: Sequence[Tensor], code: Tensor) -> Tensor:
            return torch.func.functional_call(template, dict(zip(names, weights, strict=True)), (code,))

        def render(*variables: Tensor) -> tuple[Tensor, Tensor]:
            return obs.normalize(images01(variables[: len(names)], variables[len(names)])), labels

        def regularizer(inputs: Tensor, variables: tuple[Tensor, ...] = ()) -> Tensor:
            return self.tv * total_variation(inputs) if self.tv else inputs.new_zeros(())

        def build(form: str) -> GradientMatcher:
            return GradientMatcher(obs, distance=self.distance, render=render, regularizer=regularizer,
                                   fedavg=self.fedavg, device=self.device, **compilation.matcher_flags(form))

        matcher, decision = compilation.choose(
            self.compile,
            steps=self.steps,
            build=build,
            probe=lambda candidate: candidate.step([*stacked, codes]),
            key=lambda: compilation.step_key("CINet", [obs.model, template], [codes.shape], self.device),
            tensors=lambda: compilation.parameter_tensors(obs.model, template),
            device=self.device,
        )

        def step(current: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
            grads, loss, dist = matcher.step([*current, codes])
            return grads[: len(names)], loss, dist

        result = optimize(step, stacked, iterations=self.steps, lr=self.lr, schedule=self.schedule,
                          log_every=self.log_every, progress=progress, description="CINet")
        best = int(torch.argmin(result.best_distance))
        with torch.no_grad():
            images = images01([w[best] for w in result.best], codes[best]).clamp(0, 1).detach().cpu()
        return Reconstruction(
            images=images, labels=labels.cpu(), score=float(result.best_distance[best]), history=result.history,
            iterations=matcher.evaluations, interrupted=result.interrupted,
            extras={"restart": best, "compile_seconds": matcher.compile_seconds,
                    "compile": compilation.finished(decision, matcher),
                    "generator_parameters": sum(p.numel() for p in template.parameters())},
        )
