"""Shared machinery of the generation-based attacks (GIFD, GGL, GIAS).

A generation-based attack searches the input space of a pretrained generator (a `Prior`) instead of pixels:
the attack's variables are rendered by the prior into [0, 1] images, adapted to the victim's input space
(`to_victim`: resize, channels, normalisation), and the victim's gradient of those images is matched to the
observed one (`GradientMatcher`). This module holds what the attacks have in common:

* `GenerativeAttack`: the base class — the prior, inferred labels and the prior's conditioning on them, the
  render path, the gradient matcher and keyword validation.
* `GenerativeAttack.search_stage`: one stage of Adam search over a prior's stage variables (DESIGN §5), with
  R restarts run as one batch (leading restart dimension; vmapped in functional mode), each restart keeping
  its own least-distance iterate. Variables are treated by their projection kind: ``sphere`` variables are
  renormalised after every step (and optionally kept in an ℓ1 ball around their start), ``l1`` variables
  (features) are kept in an ℓ1 ball around their start, ``none`` variables are free and ``fixed`` ones are
  passed through unchanged.

Feature learning rates. A feature ``h`` is optimised through its deviation from the stage's start,
``h = h_start + s·u``, with ``u`` starting at 0 and ``s`` a per-sample scale: the RMS of ``h_start`` in
relative mode, 1 in absolute mode. Adam on ``u`` with rate ``lr`` is Adam on ``h`` with rate ``lr·s`` (Adam is
invariant to the gradient's scale), so each restart and image gets the relative rate of its own start feature
and restarts stay independent chains; the ℓ1 ball on ``h − h_start`` is the ball of radius ``r/s`` on ``u``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from fedinvert.attacks import compilation
from fedinvert.attacks.base import Attack, batch_size_of, get_schedule, optimize
from fedinvert.attacks.labels import LABEL_METHODS, infer_labels
from fedinvert.attacks.objectives import (
    DISTANCES,
    FEDAVG_MODES,
    GradientMatcher,
    ImagePrior,
    _affine_batch_norm_,
)
from fedinvert.attacks.projections import project_l1_ball, project_l1_ball_around
from fedinvert.errors import ConfigError, MissingCapabilityError
from fedinvert.observation import Capability, Observation
from fedinvert.priors import Prior, to_victim
from fedinvert.priors.base import Variables

T = TypeVar("T")

#: Relative ℓ1 radii (fractions of the start feature's ℓ1 norm) of face-dcgan's four feature stages, from the
#: probe in reference/gen-gia-probe.md; priors with another number of feature stages interpolate them by depth.
DEFAULT_RELATIVE_RADII = (0.1, 0.3, 0.6, 1.0)

Regularizer = Callable[[Tensor, tuple[Tensor, ...]], Tensor]


# -- keyword validation ------------------------------------------------------------------------------
def check_choice(key: str, value: object, choices: Sequence[str]) -> str:
    """Raise ConfigError unless ``value`` is one of ``choices``; returns it."""
    if value not in choices:
        raise ConfigError(f"attack.{key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def check_count(key: str, value: object, *, minimum: int = 1) -> int:
    """An integer ≥ ``minimum`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"attack.{key} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def check_number(key: str, value: object, *, positive: bool = False) -> float:
    """A finite number, ≥ 0 (or > 0 with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"attack.{key} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"attack.{key} must be {'positive' if positive else 'non-negative'}, got {value!r}")
    return float(value)


def check_radii(key: str, values: Sequence[float] | None) -> list[float] | None:
    """None, or a non-empty list of non-negative finite radii."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"attack.{key} must be a non-empty list of radii, got {values!r}")
    return [check_number(f"{key}[{i}]", v) for i, v in enumerate(values)]


# -- small pieces ------------------------------------------------------------------------------------
def image_regularizer(*, tv: float, norm: float) -> Regularizer | None:
    """``tv``·TV(x) + ``norm``·‖x‖₂/(H·W) on the victim's (normalised) input, GIFD's image terms; None if both 0."""
    return ImagePrior(tv=tv, norm=norm) if tv or norm else None


def latent_kl(latent: Tensor) -> Tensor:
    """GGL's latent prior: KL(N(μ̂, σ̂²) ‖ N(0, 1)) of each latent's entries, summed over the batch.

    μ̂ and σ̂² are the mean and (biased) variance of one image's latent entries. Meaningful for N(0, I)
    latents (face-dcgan, BigGAN); set its weight to 0 for StyleGAN2's W+.

    Args:
        latent: (B, ...) latents of one candidate batch.
    """
    flat = latent.reshape(latent.shape[0], -1)
    mean = flat.mean(dim=1)
    var = flat.var(dim=1, unbiased=False)
    return (-0.5 * (1 + torch.log(var + 1e-10) - mean.square() - var)).sum()


def per_sample_rms(x: Tensor) -> Tensor:
    """RMS of each sample of ``x`` (N, ...), shaped (N, 1, ...) for broadcasting; 1 where a sample is all zero."""
    rms = x.square().reshape(x.shape[0], -1).mean(dim=1).sqrt()
    rms = torch.where(rms > 0, rms, torch.ones_like(rms))
    return rms.reshape(x.shape[0], *([1] * (x.dim() - 1)))


def per_sample_l1(x: Tensor) -> Tensor:
    """ℓ1 norm of each sample of ``x`` (N, ...): (N,)."""
    return x.reshape(x.shape[0], -1).abs().sum(dim=1)


def interpolate_radii(anchors: Sequence[float], count: int) -> list[float]:
    """``count`` radii growing with depth: ``anchors`` spread evenly over the stages, linear in between."""
    if count <= 0:
        return []
    positions = np.linspace(0.0, 1.0, count)
    anchor_positions = np.linspace(0.0, 1.0, len(anchors))
    return [float(v) for v in np.interp(positions, anchor_positions, anchors)]


def repeat_restarts(x: Tensor | None, restarts: int) -> Tensor | None:
    """(B, ...) -> (R·B, ...) restart-major, the layout of every flattened (restart, image) tensor here."""
    if x is None:
        return None
    return x.repeat(restarts, *([1] * (x.dim() - 1)))


@dataclass
class Setup:
    """What a generation-based attack derives from the observation before searching.

    Attributes:
        batch_size: B.
        labels: (B,) labels of the FL loss (inferred or known).
        generator_labels: (B,) labels that condition the prior (the FL labels unless mapped).
        cond: the prior's conditioning for one batch, (B, ...), or None for unconditional priors.
    """

    batch_size: int
    labels: Tensor
    generator_labels: Tensor
    cond: Tensor | None


@dataclass
class StageSearch:
    """Result of `GenerativeAttack.search_stage`.

    Attributes:
        variables: each restart's carried iterate (its least-distance one under ``carry="best"``, its final one
            under ``carry="final"``) as the stage's variables, (R·B, ...) restart-major, ready for
            ``prior.render``/``prior.advance`` with the repeated conditioning.
        distance: (R,) pure gradient distance of each restart's carried iterate (inf where not finite).
        history: logged steps (see `optimize`).
        steps: Adam steps done; evaluations: gradient-matching evaluations (steps × R).
        interrupted: stopped by Ctrl-C.
    """

    variables: Variables
    distance: Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    evaluations: int = 0
    interrupted: bool = False
    compile_seconds: float = 0.0
    compile: dict[str, Any] = field(default_factory=dict)


class GenerativeAttack(Attack):
    """Base of the attacks that search a pretrained generator (`Prior`).

    Args:
        prior: the generator (``fedinvert.priors.PRIORS.build("face-dcgan")`` ...); moved to ``device``.
        restarts: independent searches run as one batch; the one with the least gradient distance wins.
        tv: weight of the total variation of the victim's input tensor in the loss (≥ 0).
        image_norm: weight of ‖x‖₂/(H·W) of the victim's input tensor in the loss (≥ 0).
        distance: gradient distance, a name in ``DISTANCES`` (``cosine``, ``l2``, ``layer_cosine``,
            ``masked_cosine`` with ``prune_ratio``).
        prune_ratio: for ``masked_cosine``, the fraction of smallest observed entries ignored, in [0, 1).
        labels: label inference method: ``auto``, ``known`` or a name in ``LABEL_METHODS``.
        adaptive: replay the declared defences' deterministic transforms on the dummy update (`GradientMatcher`).
        fedavg: for FedAvg weight deltas, ``strong`` (unroll the known local training), ``weak`` (the survey's
            guess) or ``none`` (treat −Δ/η as one gradient); see `GradientMatcher`.
        compile: ``auto``, ``true`` or ``false``: run the step as a vmapped, compiled pure function
            (``false``: eager autograd, one restart after another).
        device: ``auto``, ``cpu``, ``cuda``, ...
        log_every: steps between host syncs for history and progress.

    Raises:
        MissingCapabilityError: no prior given.
        ConfigError: a value out of range or an unknown name.
    """

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.PRIOR})
    #: share of the update's coordinates left out of every optimised distance (GIFD's held-out selection)
    holdout: float = 0.0
    holdout_seed: int = 0

    def __init__(
        self,
        *,
        prior: Prior | None,
        restarts: int,
        tv: float,
        image_norm: float,
        distance: str,
        prune_ratio: float,
        labels: str,
        adaptive: bool,
        fedavg: str,
        compile: bool | str,
        device: str | torch.device,
        log_every: int,
    ) -> None:
        super().__init__(device=device, log_every=log_every)
        name = type(self).__name__
        if prior is None:
            raise MissingCapabilityError(
                f"attack {name} needs a generative prior: pass prior=PRIORS.build('face-dcgan') in Python or"
                " prior=face-dcgan on the command line"
            )
        if not isinstance(prior, Prior):
            raise ConfigError(f"attack {name}: prior must be a fedinvert Prior, got {type(prior).__name__}")
        self.prior = prior.to(self.device)
        self.restarts = check_count("restarts", restarts)
        self.tv = check_number("tv", tv)
        self.image_norm = check_number("image_norm", image_norm)
        self.distance = check_choice("distance", distance, DISTANCES.names())
        self.prune_ratio = check_number("prune_ratio", prune_ratio)
        if self.prune_ratio >= 1:
            raise ConfigError(f"attack.prune_ratio must lie in [0, 1), got {prune_ratio}")
        self.labels = check_choice("labels", labels, ["auto", "known", *LABEL_METHODS.names()])
        if not isinstance(adaptive, bool):
            raise ConfigError(f"attack.adaptive must be true or false, got {adaptive!r}")
        self.adaptive = adaptive
        self.fedavg = check_choice("fedavg", fedavg, FEDAVG_MODES)
        self.compile = compilation.check_setting(compile)
        self._vmap_prior: Prior | None = None

    def generator(self, functional: bool) -> Prior:
        """The prior to call inside a step: in functional (vmapped) mode a copy whose eval-mode BatchNorm
        layers are written as affine maps — same numbers, but vmap batches them natively instead of looping
        over samples (no batching rule for eval-mode batch norm)."""
        if not functional or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.prior.modules()):
            return self.prior
        if self._vmap_prior is None:
            self._vmap_prior = copy.deepcopy(self.prior)
            _affine_batch_norm_(self._vmap_prior)
        return self._vmap_prior

    # -- labels and conditioning ---------------------------------------------------------------------
    def generator_labels(self, obs: Observation, labels: Tensor) -> Tensor:
        """The labels that condition the prior, given the FL labels of the loss.

        The hook for label mapping (journal GIFD, DESIGN §5): a mapped label conditions only the generator,
        the FL loss keeps ``labels``. Here: ``labels`` unchanged (the official code's implicit identity map).
        """
        return labels

    def prepare(self, obs: Observation) -> Setup:
        """Batch size, the FL labels (inferred unless granted) and the prior's conditioning on them."""
        size = batch_size_of(obs)
        labels = infer_labels(obs, method=self.labels, batch_size=size).to(self.device)
        mapped = self.generator_labels(obs, labels)
        cond = self.prior.condition(mapped.to(self.prior.device)) if self.prior.is_conditional else None
        return Setup(batch_size=size, labels=labels, generator_labels=mapped, cond=cond)

    def sample_latents(self, batch_size: int, rng: torch.Generator | None) -> Tensor:
        """(R·B, *latent_shape) latents, restart by restart, so restart r's draw does not depend on R."""
        return torch.cat([self.prior.sample_latent(batch_size, generator=rng) for _ in range(self.restarts)])

    # -- the render path -----------------------------------------------------------------------------
    def victim_inputs(self, obs: Observation, images01: Tensor) -> Tensor:
        """The prior's [0, 1] images (N, C', H', W') -> the victim's normalised input (N, *obs.image_shape)."""
        return to_victim(images01, image_shape=obs.image_shape, normalization=obs.normalization)

    def victim_images(self, obs: Observation, images01: Tensor) -> Tensor:
        """The prior's images as the victim sees them, un-normalised: (N, *obs.image_shape) in [0, 1], on the CPU."""
        return obs.denormalize(self.victim_inputs(obs, images01)).clamp(0, 1).detach().cpu()

    @torch.no_grad()
    def stage_images(self, obs: Observation, setup: Setup, k: int, variables: Variables) -> Tensor:
        """Render stage-k variables (R·B, ...) into (R, B, *obs.image_shape) images in [0, 1]."""
        cond = repeat_restarts(setup.cond, self.restarts)
        images = self.victim_images(obs, self.prior.render(k, variables, cond))
        return images.reshape(self.restarts, setup.batch_size, *images.shape[1:])

    def make_matcher(
        self,
        obs: Observation,
        render: Callable[..., tuple[Tensor, Tensor]],
        *,
        form: str,
        regularizer: Regularizer | None,
    ) -> GradientMatcher:
        """The gradient matcher of one search in ``form`` (`compilation.EAGER`, ``VMAP`` or ``COMPILED``, per
        `choose_compiled`); the two latter are the vmappable pure form, the last one compiled."""
        return GradientMatcher(
            obs,
            distance=self.distance,
            prune_ratio=self.prune_ratio,
            render=render,
            regularizer=regularizer,
            adaptive=self.adaptive,
            fedavg=self.fedavg,
            holdout=self.holdout,
            holdout_seed=self.holdout_seed,
            device=self.device,
            **compilation.matcher_flags(form),
        )

    def choose_compiled(
        self,
        obs: Observation,
        label: str,
        *,
        steps: int,
        build: Callable[[str], T],
        probe: Callable[[T], Any],
        shapes: Sequence[Sequence[int]],
    ) -> tuple[T, compilation.CompileDecision]:
        """`compilation.choose` for a search of ``steps`` through the victim and this attack's prior.

        Uncompiled, the restarts stay looped: the vmapped form runs the prior with its batch norms rewritten
        as affine maps, whose last digits differ, so restart 0 of an R = 2 run would no longer follow the R = 1
        run's chain (`tests/attacks/test_gifd.py`)."""
        return compilation.choose(
            self.compile,
            steps=steps,
            build=build,
            probe=probe,
            key=lambda: compilation.step_key(
                f"{type(self).__name__}:{label}", [obs.model, self.prior], [tuple(s) for s in shapes], self.device
            ),
            tensors=lambda: compilation.parameter_tensors(obs.model, self.prior),
            device=self.device,
        )

    # -- one stage of Adam search --------------------------------------------------------------------
    def search_stage(
        self,
        obs: Observation,
        setup: Setup,
        k: int,
        start: Variables,
        *,
        steps: int,
        lr: float,
        schedule: str,
        relative_lr: bool = False,
        radius: float | None = None,
        latent_radius: float | None = None,
        relative_radius: bool = False,
        regularizer: Regularizer | None = None,
        progress: bool = False,
        description: str = "stage",
        carry: str = "best",
    ) -> StageSearch:
        """Adam on stage k's variables, R restarts at once; returns each restart's least-distance iterate
        (``carry="best"``, its start included) or its final one (``carry="final"``).

        Args:
            obs: the observation.
            setup: from `prepare`.
            k: the prior's stage.
            start: the stage's start values (R·B, ...) restart-major, as from ``prior.stage_variables`` or
                ``prior.advance``.
            steps: Adam steps.
            lr: base learning rate; for ``l1`` variables with ``relative_lr`` it is multiplied by the RMS of
                each sample's start value.
            schedule: learning-rate schedule over the stage (``ramp``, ``step``, ``cosine``, ``constant``).
            relative_lr: scale the rate of ``l1`` variables (features) by their start RMS.
            radius: ℓ1 radius of ``l1`` variables around their start (None: no ball).
            latent_radius: ℓ1 radius of ``sphere`` variables around their start (None: no ball), applied
                after the renormalisation (GIFD's StyleGAN2 setting).
            relative_radius: radii are fractions of each sample's start ℓ1 norm instead of absolute norms.
            regularizer: added to the loss (not to the distance); sees the victim input and one restart's
                variables (optimised ones first, in ``start``'s order, then the constants).
            progress: show a progress bar.
            description: the progress bar's label.
            carry: ``best`` — each restart's least pure-distance iterate (the stage's start included, so a
                stage never ends worse than it began) — or ``final`` — its last evaluated iterate and that
                iterate's distance (the official GIFD code's behaviour; a stage can end worse than it began).
        """
        check_choice("carry", carry, ["best", "final"])
        restarts, batch = self.restarts, setup.batch_size
        kinds = {name: self.prior.projection_kind(name) for name in start}
        optimised = [n for n in start if kinds[n] != "fixed"]
        fixed = [n for n in start if kinds[n] == "fixed"]
        features = [n for n in optimised if kinds[n] == "l1"]
        with torch.no_grad():
            start = {n: v.detach().clone() for n, v in start.items()}
            scale = {
                n: per_sample_rms(start[n]) if relative_lr else torch.ones_like(per_sample_rms(start[n]))
                for n in features
            }
            leaves = [torch.zeros_like(start[n]) if n in features else start[n].clone() for n in optimised]
            constants = [t for n in features for t in (start[n], scale[n])] + [start[n] for n in fixed]

            def radii(name: str, value: float | None) -> Tensor | None:
                if value is None:
                    return None
                base = value * per_sample_l1(start[name]) if relative_radius else torch.full(
                    (start[name].shape[0],), float(value), device=start[name].device
                )
                return base / scale[name].reshape(-1) if name in scale else base

            balls = {
                n: radii(n, radius if kinds[n] == "l1" else latent_radius if kinds[n] == "sphere" else None)
                for n in optimised
            }

        def by_restart(t: Tensor) -> Tensor:
            return t.reshape(restarts, batch, *t.shape[1:])

        def assemble(values: Sequence[Tensor]) -> Variables:
            """Stage variables from (optimised values, constants), per restart or flattened alike."""
            rest = iter(values[len(optimised) :])
            variables: Variables = {}
            for name, value in zip(optimised, values[: len(optimised)], strict=True):
                if name in scale:
                    origin, factor = next(rest), next(rest)
                    variables[name] = origin + factor * value
                else:
                    variables[name] = value
            for name in fixed:
                variables[name] = next(rest)
            return variables

        def build(form: str) -> GradientMatcher:
            generator = self.generator(compilation.functional(form))

            def render(*values: Tensor) -> tuple[Tensor, Tensor]:
                images = generator.render(k, assemble(values), setup.cond)
                return self.victim_inputs(obs, images), setup.labels

            return self.make_matcher(obs, render, form=form, regularizer=regularizer)

        def project(current: list[Tensor]) -> None:
            for name, leaf in zip(optimised, current, strict=True):
                flat = leaf.reshape(restarts * batch, *leaf.shape[2:])
                ball = balls[name]
                if kinds[name] == "sphere":
                    flat = self.prior.renormalize(name, flat, start[name])
                    if ball is not None:
                        flat = project_l1_ball_around(flat, start[name], ball)
                elif ball is not None:  # features: u is the deviation from the start, in units of s
                    flat = project_l1_ball(flat, ball)
                else:
                    continue
                leaf.copy_(flat.reshape(leaf.shape))

        batched_constants = [by_restart(t) for t in constants]
        first = [*(by_restart(t) for t in leaves), *batched_constants]
        matcher, decision = self.choose_compiled(
            obs, f"stage{k}", steps=steps, build=build, probe=lambda candidate: candidate.step(first),
            shapes=[t.shape for t in first],
        )

        def step(variables: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
            grads, loss, dist = matcher.step([*variables, *batched_constants])
            return grads[: len(optimised)], loss, dist

        result = optimize(
            step,
            [by_restart(t) for t in leaves],
            iterations=steps,
            lr=lr,
            schedule=schedule,
            project=project if any(kinds[n] in ("sphere", "l1") for n in optimised) else None,
            log_every=self.log_every,
            progress=progress,
            description=description,
        )
        kept, kept_distance = (result.best, result.best_distance) if carry == "best" else (
            result.last, result.last_distance
        )
        assert kept_distance is not None  # `optimize` always records its last iterate
        with torch.no_grad():
            flat_kept = [t.reshape(restarts * batch, *t.shape[2:]) for t in kept]
            carried = assemble([*flat_kept, *constants])
        history = [{"stage": description, **entry} for entry in result.history]
        return StageSearch(
            variables=carried,
            distance=kept_distance.detach().cpu(),
            history=history,
            steps=result.steps,
            evaluations=matcher.evaluations,
            interrupted=result.interrupted,
            compile_seconds=matcher.compile_seconds,
            compile=compilation.finished(decision, matcher),
        )


class StageRenderer(nn.Module):
    """``prior.render(k, variables, cond)`` as a module's forward, so `torch.func.functional_call` can run the
    prior with other generator weights (GIAS fine-tunes copies of them). Parameter names gain ``prior.``."""

    def __init__(self, prior: Prior, k: int) -> None:
        super().__init__()
        self.prior = prior
        self.k = k

    def forward(self, variables: Variables, cond: Tensor | None) -> Tensor:
        return self.prior.render(self.k, variables, cond)


def validate_schedule(name: str) -> str:
    """A known learning-rate schedule name (ConfigError otherwise)."""
    get_schedule(name)
    return name
