"""GIAS: Gradient Inversion in Alternative Spaces (Jeon, Kim, Kim, Lee, Kim, "Gradient Inversion with
Generative Image Prior", NeurIPS 2021).

GIAS first searches a pretrained GAN's latent space, then fine-tunes the generator's weights — a separate copy
per image — so the reconstruction may leave the GAN's range where the gradient asks for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fedinvert.attacks import compilation
from fedinvert.attacks.base import ATTACKS, optimize
from fedinvert.attacks.generative.base import (
    GenerativeAttack,
    Setup,
    StageRenderer,
    check_count,
    check_number,
    image_regularizer,
    repeat_restarts,
    validate_schedule,
)
from fedinvert.attacks.objectives import GradientMatcher
from fedinvert.observation import Observation, Reconstruction, StageResult
from fedinvert.priors import Prior
from fedinvert.priors.base import Variables

log = logging.getLogger(__name__)


@ATTACKS.register("gias")
class GIAS(GenerativeAttack):
    """GIAS (Jeon et al., NeurIPS 2021): latent search, then per-image generator fine-tuning.

    1. Latent search: ``latent_steps`` Adam steps (``lr``) on the latent, renormalised to its starting norm
       after each step, R restarts batched; each restart keeps its least-distance latent.
    2. Parameter search: every restart gets one copy of the generator's weights per image of the batch
       (image b of restart r is rendered by G_{θ_rb}(z_rb), the latent fixed at its stage-1 best) and the
       copies are fine-tuned with Adam (``finetune_lr``) for ``finetune_steps`` steps. The copies live as
       tensors with leading (restart, image) dimensions and the prior is called through
       `torch.func.functional_call`, vmapped over images — the prior itself is never changed. Only weights
       that influence the image are tuned (e.g. not BigGAN's class embedding when the conditioning is given).

    Loss: gradient distance + ``tv``·TV + ``image_norm``·‖x‖₂/(H·W) (the GIFD code's baseline setting). Both
    phases are recorded as stages (``latent``, ``generator``); the answer is the one with the least distance
    (the fine-tuning starts at the latent result, so normally ``generator``). ``iterations`` =
    (latent_steps + finetune_steps) × restarts. Memory: R × B copies of the generator plus Adam state.

    Args:
        prior: the generator (required).
        latent_steps: Adam steps of the latent search (GIAS: 1000).
        finetune_steps: Adam steps of the parameter search (GIAS: 8000).
        restarts: independent chains (4).
        lr: latent learning rate (0.03).
        finetune_lr: generator learning rate (1e-3 for StyleGAN2-size and small priors; GIFD's BigGAN runs use 1e-5).
        schedule: learning-rate schedule of both phases (``step``: ×0.1 at 3/8, 5/8, 7/8, as GIAS).
        tv, image_norm, distance, prune_ratio, labels, adaptive, fedavg, compile, device, log_every: as in
            `GenerativeAttack`.

    Raises:
        MissingCapabilityError: no prior. ConfigError: invalid values.
    """

    def __init__(
        self,
        *,
        prior: Prior | None = None,
        latent_steps: int = 1000,
        finetune_steps: int = 8000,
        restarts: int = 4,
        lr: float = 0.03,
        finetune_lr: float = 1e-3,
        schedule: str = "step",
        tv: float = 1e-4,
        image_norm: float = 1e-6,
        distance: str = "cosine",
        prune_ratio: float = 0.0,
        labels: str = "auto",
        adaptive: bool = False,
        fedavg: str = "strong",
        compile: bool | str = "auto",
        device: str | torch.device = "auto",
        log_every: int = 50,
    ) -> None:
        super().__init__(
            prior=prior,
            restarts=restarts,
            tv=tv,
            image_norm=image_norm,
            distance=distance,
            prune_ratio=prune_ratio,
            labels=labels,
            adaptive=adaptive,
            fedavg=fedavg,
            compile=compile,
            device=device,
            log_every=log_every,
        )
        self.latent_steps = check_count("latent_steps", latent_steps)
        self.finetune_steps = check_count("finetune_steps", finetune_steps, minimum=0)
        self.lr = check_number("lr", lr, positive=True)
        self.finetune_lr = check_number("finetune_lr", finetune_lr, positive=True)
        self.schedule = validate_schedule(schedule)

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        """Latent search, then generator fine-tuning; ``rng`` draws the restarts' latents."""
        setup = self.prepare(obs)
        regularizer = image_regularizer(tv=self.tv, norm=self.image_norm)
        with torch.no_grad():
            start = self.prior.initial_variables(
                self.sample_latents(setup.batch_size, rng), repeat_restarts(setup.cond, self.restarts)
            )
        latent = self.search_stage(
            obs, setup, 0, start, steps=self.latent_steps, lr=self.lr, schedule=self.schedule,
            regularizer=regularizer, progress=progress, description="latent",
        )
        best = int(torch.argmin(latent.distance))
        stages = [
            StageResult("latent", self.stage_images(obs, setup, 0, latent.variables)[best],
                        float(latent.distance[best]), restart=best)
        ]
        history, evaluations = list(latent.history), latent.evaluations
        compile_seconds = latent.compile_seconds
        decisions = {"latent": latent.compile}
        interrupted = latent.interrupted
        if self.finetune_steps and not interrupted:
            images, distance, restart, tuned = self._finetune(obs, setup, latent.variables, progress)
            history += tuned["history"]
            evaluations += tuned["evaluations"]
            compile_seconds += tuned["compile_seconds"]
            decisions["generator"] = tuned["compile"]
            interrupted = tuned["interrupted"]
            if distance < float("inf"):
                stages.append(StageResult("generator", images, distance, restart=restart))
        chosen = min(stages, key=lambda s: s.distance)
        return Reconstruction(
            images=chosen.images,
            labels=setup.labels.cpu(),
            score=chosen.distance,
            history=history,
            stages=stages,
            iterations=evaluations,
            interrupted=interrupted,
            extras={"stage": chosen.name, "restart": chosen.restart, "compile_seconds": compile_seconds,
                    "compile": decisions},
        )

    # -- parameter search ---------------------------------------------------------------------------------
    def tunable_parameters(self, setup: Setup, variables: Variables) -> list[str]:
        """Names of the prior's weights that the rendered image depends on (found by one backward pass)."""
        renderer = StageRenderer(self.prior, 0)
        params = {n: p.detach().requires_grad_(True) for n, p in renderer.named_parameters()}
        sample = {n: v[: setup.batch_size] for n, v in variables.items()}
        with torch.enable_grad():
            image = torch.func.functional_call(renderer, params, (sample, setup.cond))
            grads = torch.autograd.grad(image.sum(), list(params.values()), allow_unused=True)
        return [n for n, g in zip(params, grads, strict=True) if g is not None]

    def _finetune(
        self, obs: Observation, setup: Setup, variables: Variables, progress: bool
    ) -> tuple[Tensor, float, int, dict[str, Any]]:
        restarts, batch = self.restarts, setup.batch_size
        names = self.tunable_parameters(setup, variables)
        plain = StageRenderer(self.prior, 0)  # the prior as it is: its weights' names, and the final render
        weights = dict(plain.named_parameters())
        inputs = list(variables)

        def by_restart(t: Tensor) -> Tensor:
            return t.reshape(restarts, batch, *t.shape[1:])

        copies = [weights[n].detach().expand(restarts, batch, *weights[n].shape).clone() for n in names]
        latents = [by_restart(variables[n].detach()) for n in inputs]

        def render_batch(
            renderer: StageRenderer, thetas: Sequence[Tensor], values: Sequence[Tensor]
        ) -> Tensor:
            """One restart: each image b rendered by its own weights; thetas (B, ...), values (B, ...)."""

            def one(theta: tuple[Tensor, ...], value: tuple[Tensor, ...], cond: Tensor | None) -> Tensor:
                params = dict(zip(names, theta, strict=True))
                stage = {n: v[None] for n, v in zip(inputs, value, strict=True)}
                return torch.func.functional_call(
                    renderer, params, (stage, None if cond is None else cond[None]), strict=False
                )[0]

            if setup.cond is None:
                return torch.func.vmap(lambda th, va: one(th, va, None))(tuple(thetas), tuple(values))
            return torch.func.vmap(one)(tuple(thetas), tuple(values), setup.cond)

        def build(form: str) -> GradientMatcher:
            renderer = StageRenderer(self.generator(compilation.functional(form)), 0)

            def render(*values: Tensor) -> tuple[Tensor, Tensor]:
                images = render_batch(renderer, values[: len(names)], values[len(names) :])
                return self.victim_inputs(obs, images), setup.labels

            return self.make_matcher(
                obs, render, form=form, regularizer=image_regularizer(tv=self.tv, norm=self.image_norm)
            )

        first = [*copies, *latents]
        matcher, decision = self.choose_compiled(
            obs, "generator", steps=self.finetune_steps, build=build, probe=lambda candidate: candidate.step(first),
            shapes=[t.shape for t in first],
        )

        def step(current: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
            grads, loss, dist = matcher.step([*current, *latents])
            return grads[: len(names)], loss, dist

        result = optimize(
            step,
            copies,
            iterations=self.finetune_steps,
            lr=self.finetune_lr,
            schedule=self.schedule,
            log_every=self.log_every,
            progress=progress,
            description="generator",
        )
        best = int(torch.argmin(result.best_distance))
        with torch.no_grad():
            thetas = [t[best] for t in result.best]
            images01 = render_batch(plain, thetas, [v[best] for v in latents])
            images = self.victim_images(obs, images01)
        info = {
            "history": [{"stage": "generator", **entry} for entry in result.history],
            "evaluations": matcher.evaluations,
            "compile_seconds": matcher.compile_seconds,
            "compile": compilation.finished(decision, matcher),
            "interrupted": result.interrupted,
        }
        return images, float(result.best_distance[best]), best, info
