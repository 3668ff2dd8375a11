"""GGL: Generative Gradient Leakage (Li, Xu, Feng, Li, CVPR 2022, "Auditing Privacy Defenses in Federated
Learning via Generative Gradient Leakage").

GGL searches only the latent space of a pretrained GAN, without gradients through the victim: a black-box
optimiser (CMA-ES) proposes latents, the victim's gradient of the rendered images is compared to the observed
one, and a KL term keeps the latents' statistics close to the prior's N(0, I). An Adam variant with the
latent's sphere projection is offered for comparison.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fedinvert.attacks import compilation
from fedinvert.attacks.base import ATTACKS
from fedinvert.attacks.generative.base import (
    GenerativeAttack,
    Setup,
    check_choice,
    check_count,
    check_number,
    image_regularizer,
    latent_kl,
    repeat_restarts,
    validate_schedule,
)
from fedinvert.errors import ConfigError
from fedinvert.observation import Observation, Reconstruction
from fedinvert.priors import Prior

log = logging.getLogger(__name__)

#: Above this many latent dimensions (B × latent size) CMA-ES adapts a diagonal covariance only (sep-CMA).
FULL_COVARIANCE_LIMIT = 1000


def import_cma() -> Any:
    """The `cma` package (pycma), imported on first use; ConfigError saying how to install it otherwise."""
    try:
        import cma
    except ModuleNotFoundError:
        raise ConfigError(
            "GGL with optimizer=cma needs the `cma` package (pycma): pip install 'fedinvert[gen]'"
            " (or use attack.optimizer=adam)"
        ) from None
    return cma


@ATTACKS.register("ggl")
class GGL(GenerativeAttack):
    """GGL (Li et al., CVPR 2022): latent-only search of a GAN, gradient-free (CMA-ES) or with Adam.

    Loss of a candidate batch of latents z (B, ...): gradient distance (``l2`` as GGL) + ``kld`` · Σ_b
    KL(N(μ̂_b, σ̂_b²) ‖ N(0, 1)) over each latent's entries (GGL's latent prior) + optional image terms.

    * ``optimizer="cma"``: CMA-ES from pycma, one independent run per restart over the flattened batch of
      latents (B × latent size dimensions), ``population`` candidates per generation, ``iterations``
      generations; the restarts' populations are scored together in one vmapped batch. Starts at a latent
      drawn from the prior with step size ``sigma`` × the standard deviation of that draw. Above
      1000 dimensions the covariance is diagonal (sep-CMA-ES).
    * ``optimizer="adam"``: ``iterations`` Adam steps on the latent (``lr``, ``schedule``), renormalised to its
      starting norm after each step, restarts batched as in GIFD's latent stage; ``population`` is unused.

    Each restart keeps its least pure-distance candidate (no KL or image terms); the answer is the restart with
    the least distance. ``iterations`` in the result counts every evaluated candidate (CMA: generations ×
    population × restarts; Adam: steps × restarts). Ctrl-C returns the best so far.

    Args:
        prior: the generator (required).
        optimizer: ``cma`` (GGL) or ``adam``.
        iterations: CMA generations (GGL: 800) or Adam steps.
        population: CMA candidates per generation (GGL: 50).
        restarts: independent searches (GGL: 1).
        sigma: CMA initial step size, in units of the starting latent's standard deviation (> 0).
        lr: Adam learning rate; schedule: Adam learning-rate schedule.
        kld: weight of the latent KL term (GGL: 0.1 for BigGAN, 0 for StyleGAN2).
        distance: gradient distance (GGL: ``l2``; ``cosine`` works as well).
        tv, image_norm: image terms on the victim's input (GGL: off).
        labels, prune_ratio, adaptive, fedavg, compile, device, log_every: as in `GenerativeAttack`. With CMA, ``compile``
            only decides whether candidates are scored by a compiled function.

    Raises:
        MissingCapabilityError: no prior. ConfigError: bad values, or ``cma`` is not installed.
    """

    def __init__(
        self,
        *,
        prior: Prior | None = None,
        optimizer: Literal["cma", "adam"] = "cma",
        iterations: int = 800,
        population: int = 50,
        restarts: int = 1,
        sigma: float = 1.0,
        lr: float = 0.1,
        schedule: str = "ramp",
        kld: float = 0.1,
        distance: str = "l2",
        tv: float = 0.0,
        image_norm: float = 0.0,
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
        self.optimizer = check_choice("optimizer", optimizer, ["cma", "adam"])
        self.iterations = check_count("iterations", iterations)
        self.population = check_count("population", population, minimum=2)
        self.sigma = check_number("sigma", sigma, positive=True)
        self.lr = check_number("lr", lr, positive=True)
        self.schedule = validate_schedule(schedule)
        self.kld = check_number("kld", kld)
        if self.optimizer == "cma":
            import_cma()

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        """Search the latent space; ``rng`` draws the starting latents and seeds CMA-ES."""
        setup = self.prepare(obs)
        with torch.no_grad():
            latents = self.sample_latents(setup.batch_size, rng)
        if self.optimizer == "adam":
            return self._adam(obs, setup, latents, progress)
        return self._cma(obs, setup, latents, rng, progress)

    # -- Adam --------------------------------------------------------------------------------------------
    def _adam(self, obs: Observation, setup: Setup, latents: Tensor, progress: bool) -> Reconstruction:
        prior = self.prior
        image_terms = image_regularizer(tv=self.tv, norm=self.image_norm)
        kld = self.kld

        def regularizer(inputs: Tensor, variables: tuple[Tensor, ...]) -> Tensor:
            total = inputs.new_zeros(()) if image_terms is None else image_terms(inputs, variables)
            return total + kld * latent_kl(variables[0]) if kld else total

        start = prior.initial_variables(latents, repeat_restarts(setup.cond, self.restarts))
        found = self.search_stage(
            obs, setup, 0, start, steps=self.iterations, lr=self.lr, schedule=self.schedule,
            regularizer=regularizer if image_terms is not None or kld else None,
            progress=progress, description="GGL",
        )
        best = int(torch.argmin(found.distance))
        images = self.stage_images(obs, setup, 0, found.variables)[best]
        return Reconstruction(
            images=images,
            labels=setup.labels.cpu(),
            score=float(found.distance[best]),
            history=found.history,
            iterations=found.evaluations,
            interrupted=found.interrupted,
            extras={"restart": best, "compile_seconds": found.compile_seconds, "compile": found.compile},
        )

    # -- CMA-ES ------------------------------------------------------------------------------------------
    def _cma(
        self, obs: Observation, setup: Setup, latents: Tensor, rng: torch.Generator | None, progress: bool
    ) -> Reconstruction:
        from tqdm.auto import tqdm

        cma = import_cma()
        prior, restarts, batch, population = self.prior, self.restarts, setup.batch_size, self.population
        shape = (batch, *prior.latent_shape)
        starts = latents.reshape(restarts, -1).cpu().double().numpy()
        dims = starts.shape[1]
        seeds = torch.randint(0, 2**31 - 1, (restarts,), generator=rng).tolist()
        strategies = []
        for start, seed in zip(starts, seeds, strict=True):
            stream = np.random.default_rng(seed)
            options = {
                "popsize": population,
                "seed": float("nan"),  # sampling goes through `randn` below, never numpy's global state
                "randn": lambda *size, stream=stream: stream.standard_normal(size),
                "CMA_diagonal": dims > FULL_COVARIANCE_LIMIT,
                "verbose": -9,
                "verb_log": 0,
                "verb_disp": 0,
            }
            strategies.append(cma.CMAEvolutionStrategy(start, self.sigma * float(start.std() or 1.0), options))

        sample = latents.reshape(restarts, batch, *prior.latent_shape)[:1].expand(restarts * population, *shape)
        score, decision = self.choose_compiled(
            obs, "cma", steps=self.iterations,
            build=lambda form: self._scorer(obs, setup, compiled=form == compilation.COMPILED),
            probe=lambda candidate: candidate(sample), shapes=[sample.shape],
        )
        best_latent = latents.reshape(restarts, *shape).clone()
        best_distance = torch.full((restarts,), float("inf"))
        history: list[dict[str, Any]] = []
        evaluations = 0
        interrupted = False
        t0 = time.perf_counter()
        bar = tqdm(total=self.iterations, desc="GGL (CMA-ES)", disable=not progress, leave=False)
        try:
            for generation in range(self.iterations):
                asked = [es.ask() for es in strategies]
                candidates = torch.as_tensor(np.stack([np.stack(a) for a in asked]), dtype=torch.float32)
                candidates = candidates.reshape(restarts, population, *shape).to(self.device)
                distance, loss = score(candidates.reshape(restarts * population, *shape))
                # CMA-ES lives on the host: one device-to-host copy per generation, both rows at once
                scores = torch.stack([distance, loss]).reshape(2, restarts, population).cpu()
                distance, values = scores[0], scores[1].double().numpy()
                evaluations += restarts * population
                for r, es in enumerate(strategies):
                    es.tell(asked[r], [float(v) if np.isfinite(v) else 1e30 for v in values[r]])
                    i = int(torch.argmin(distance[r]))
                    if distance[r, i] < best_distance[r]:
                        best_distance[r] = distance[r, i]
                        best_latent[r] = candidates[r, i].to(best_latent.device)
                done = generation + 1
                if done % self.log_every == 0 or done == self.iterations:
                    history.append({
                        "step": done,
                        "loss": float(np.nanmin(values)),
                        "distance": float(distance.min()),
                        "best_distance": float(best_distance.min()),
                        "seconds": time.perf_counter() - t0,
                    })
                    bar.update(done - bar.n)
                    bar.set_postfix(distance=f"{history[-1]['best_distance']:.4g}")
        except KeyboardInterrupt:
            interrupted = True
            log.warning("GGL interrupted after %d evaluations; returning the best result so far", evaluations)
        finally:
            bar.close()
        best = int(torch.argmin(best_distance))
        with torch.no_grad():
            images = self.victim_images(obs, prior(best_latent[best], setup.cond))
        return Reconstruction(
            images=images,
            labels=setup.labels.cpu(),
            score=float(best_distance[best]),
            history=history,
            iterations=evaluations,
            interrupted=interrupted,
            extras={"restart": best, "restart_distances": best_distance.tolist(),
                    "compile_seconds": score.compile_seconds, "compile": compilation.finished(decision, score)},
        )

    def _scorer(self, obs: Observation, setup: Setup, *, compiled: bool) -> _Scorer:
        """Candidate latents (N, B, ...) -> (pure distance (N,), loss (N,)), vmapped over N; compiled or not."""
        prior = self.generator(True)
        image_terms = image_regularizer(tv=self.tv, norm=self.image_norm)

        def render(latent: Tensor) -> tuple[Tensor, Tensor]:
            return self.victim_inputs(obs, prior(latent, setup.cond)), setup.labels

        matcher = self.make_matcher(obs, render, form=compilation.VMAP, regularizer=None)

        def one(latent: Tensor) -> tuple[Tensor, Tensor]:
            inputs, labels = render(latent)
            dist = matcher.distance_fn(matcher.parameter_gradient(inputs, labels), matcher.target)
            loss = dist + self.kld * latent_kl(latent)
            if image_terms is not None:
                loss = loss + image_terms(inputs, (latent,))
            return dist, loss

        return _Scorer(torch.func.vmap(one), compiled=compiled, device=self.device)


class _Scorer:
    """GGL's vmapped scoring of a CMA-ES population, compiled or eager; a compiled one keeps its
    `compilation.CompileClock` (``clock``)."""

    def __init__(
        self, batched: Callable[[Tensor], tuple[Tensor, Tensor]], *, compiled: bool, device: torch.device
    ) -> None:
        self.clock = compilation.CompileClock(device) if compiled else None
        self.fn = self.clock.compile(batched) if self.clock else batched

    @property
    def compile_seconds(self) -> float:
        return self.clock.seconds if self.clock else 0.0

    def __call__(self, candidates: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            dist, loss = self.clock.call(lambda: self.fn(candidates)) if self.clock else self.fn(candidates)
        return dist.detach(), loss.detach()
