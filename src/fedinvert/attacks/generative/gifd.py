"""GIFD: Generative Gradient Inversion via Feature Domain optimisation.

Fang, Chen, Wang, Wang, Xia, "GIFD: A Generative Gradient Inversion Method with Feature Domain Optimization",
ICCV 2023 (journal extension: "Enhancing Gradient Inversion Attacks in Federated Learning via Hierarchical
Feature Optimization", 2026). GIFD searches a pretrained GAN stage by stage: first the latent, then the
input feature of each generator block in turn, each feature kept within an ℓ1 ball around where the previous
stage left it; the answer is the stage whose best image matches the observed gradient best (DESIGN §5).

Deliberate differences from the official code (reference/gia-codebases.md §3.15): each stage returns the image
of its least-distance restart (the official ``choose_optimal`` returns the last restart's image); restarts
run as one batch; ground truth never reorders labels. Which iterate of a stage is recorded and carried on is
a keyword (``carry``): ``final`` is the official behaviour, ``best`` keeps each restart's least-distance iterate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from fedinvert.attacks.base import ATTACKS
from fedinvert.attacks.generative.base import (
    DEFAULT_RELATIVE_RADII,
    GenerativeAttack,
    Setup,
    check_choice,
    check_count,
    check_number,
    check_radii,
    image_regularizer,
    interpolate_radii,
    repeat_restarts,
    validate_schedule,
)
from fedinvert.attacks.generative.label_mapping import train_remapper
from fedinvert.attacks.objectives import GradientMatcher
from fedinvert.errors import ConfigError, ObservationError
from fedinvert.observation import Observation, Reconstruction, StageResult
from fedinvert.priors import Prior

log = logging.getLogger(__name__)

#: Official absolute ℓ1 radii of the feature stages k = 1, 2, ... (entry k−1 is stage k's radius).
#: BigGAN-deep (configs_biggan.yml ``max_radius_gen_out`` without its unused entry 0): 2000, 2500, ..., 7500.
BIGGAN_RADII = [2000.0 + 500.0 * i for i in range(12)]
#: StyleGAN2 (configs_stylegan2.yml ``[1000, 2000, 3000, 4000, 5000, 6000, 8000, 8000]``): feature stages 1..7.
STYLEGAN2_RADII = [2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 8000.0]
#: StyleGAN2's radii of w and the noise maps, stages 0..7 (the same official list, entry k for stage k).
STYLEGAN2_LATENT_RADII = [1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 8000.0]


class GIFD(GenerativeAttack):
    """GIFD (Fang et al., ICCV 2023): layer-wise search of a GAN's latent and intermediate features.

    For R independent restarts (one batch; each carries its own iterate of a stage into the next, see ``carry``):

    * stage 0: Adam on the latent (``lr``), renormalised to its starting norm after every step;
    * stage k ≥ 1: Adam on the input feature ``h_k`` of block k, starting from the previous stage's carried
      iterate propagated through block k−1 (``prior.advance``), its deviation from that start projected onto
      the ℓ1 ball of radius r_k after every step (per sample; exact sort-based projection). Variables of kind
      ``fixed`` (BigGAN's class-conditioning vector, StyleGAN2's RGB skip) are carried, not optimised;
    * every stage: ``steps_per_stage`` Adam steps with the ramp schedule (5 % warm-up, cosine decay over the
      last 75 %) restarted per stage, loss = gradient distance + ``tv``·TV + ``image_norm``·‖x‖₂/(H·W) on the
      victim's input; each restart keeps the iterate ``carry`` names, scored by its pure distance (no
      regularisers).

    Per stage the restart with the least distance is recorded (``Reconstruction.stages``, in [0, 1] at the
    victim's image shape); the answer is the recorded stage with the least distance (``selection="last"``: the
    last stage run). ``iterations`` = stages run × ``steps_per_stage`` × ``restarts``. Ctrl-C returns the best
    result so far with ``interrupted=True``.

    Learning rates: the latent (and StyleGAN2's w and noise maps) use ``lr``; features use ``lr`` × the RMS of
    each sample's start feature (``feature_lr="relative"``, default, probed on face-dcgan) or ``lr`` itself
    (``"absolute"``, the official setting for BigGAN-deep and StyleGAN2).

    Args:
        prior: the staged generator (required; the runner passes the one named by ``prior=``).
        steps_per_stage: Adam steps per stage (official: 1000).
        restarts: independent chains through all stages (official: 4).
        lr: Adam learning rate of the latent stage, and the base rate of the feature stages (0.3; chosen by
            ``benchmarks/generative_defaults.py``: +1.05 ± 0.69 dB over 0.1 paired on 24 batches; the official
            presets keep 0.1).
        feature_lr: ``relative`` or ``absolute`` (see above).
        feature_lr_scale: a factor on the feature stages' learning rate only (1.0). On the face DCGAN at 32 px,
            0.3 gained 0.7 dB on average over six private images (prior samples, LFW faces, photos; one photo
            lost 1.2 dB): deep stages started from a good previous stage often never improve on their start at
            the full rate.
        radius_mode: ``relative`` — radii are fractions of each sample's start ℓ1 norm — or ``absolute`` ℓ1 norms.
        radii: ℓ1 radius per feature stage, entry k−1 for stage k (at least up to the last stage run). None:
            relative mode uses 0.1, 0.3, 0.6, 1.0 spread over the prior's feature stages (exactly these for
            face-dcgan's four); absolute mode needs explicit radii (see `OFFICIAL_SETTINGS`).
        latent_radii: ℓ1 radius of the ``sphere`` variables (w, noise maps) around their stage start, entry k
            for stage k; None: no latent ball (the BigGAN setting). Same mode as ``radii``.
        stages: which stages to search, as names (``["z", "f1"]``) or indices (negative from the end); the
            others are only passed through. None: all stages.
        ball: apply the ℓ1 balls (False for the ablations GIFD-e and GIFD-f).
        selection: which recorded stage is the answer. ``least_distance`` (GIFD, GIFD-e): the least optimised
            gradient distance, the official rule, which rewards deep stages for fitting what an image cannot
            explain. ``held_out``: ``holdout`` of the update's coordinates (a fixed random draw) are left out of
            every stage's optimisation and the stage with the least distance on them is chosen, like validation
            data. ``agreement``: the stage whose restarts' images agree best (least mean pairwise MSE between
            the restarts' images; needs ``restarts`` ≥ 2). ``last`` (GIFD-f): the last stage run. None of them
            reads the private images.
        holdout: share of the coordinates held out with ``selection="held_out"`` (0.1); ignored otherwise.
        holdout_seed: seed of the held-out draw.
        carry: which iterate of a stage each restart records and hands to the next stage. ``best``: its least
            pure-distance iterate, the stage's own start included, so per-stage distances never rise and a
            deep stage can never be worse than the one before it. ``final``: its last evaluated iterate and
            that iterate's distance — the official code's behaviour and the setting of ``gifd-e``, ``gifd-f``
            and the official presets — so a deep stage can end worse than it began and choosing the
            least-distance stage matters. Default ``best``: no difference measured — paired over 10 LFW faces
            (B = 1, 32 px, face-dcgan, 5 stages × 60 steps × 2 restarts; ``benchmarks/gifd_carry.py``),
            PSNR best − final = +0.14 ± 1.19 dB (95 % interval), with the chosen stage differing on 7 of 10.
        tv: total-variation weight (1e-4); image_norm: ‖x‖₂/(H·W) weight (1e-6).
        distance: gradient distance (``cosine``: GIFD's global cosine).
        prune_ratio: for ``distance="masked_cosine"``.
        labels: label inference (``auto``: known if granted, iDLG at B = 1, count-aware otherwise). The labels
            condition class-conditional priors (see `generator_labels`) and the FL loss.
        schedule: per-stage learning-rate schedule (``ramp``).
        adaptive: replay the declared defences' deterministic transforms on the dummy update (the official
            code's "gradient transformation" for clipping, pruning and Soteria).
        fedavg: for FedAvg weight deltas: ``strong``, ``weak`` or ``none`` (see `GradientMatcher`).
        compile: ``auto`` | ``true`` | ``false``: batched restarts through a vmapped, compiled step, or eager
            autograd one restart after another.
        device: where to run. log_every: steps between host syncs.
        label_mapping: for FL labels that are not the prior's classes (journal GIFD): a coarse pass, then a
            remapper trained only on the prior's own samples names the generator class of its best image,
            which re-conditions the prior for the full schedule. The FL loss keeps the inferred FL labels.
        coarse_steps: steps per stage of the coarse pass (official: 100).
        remapper_samples, remapper_epochs: the remapper's training budget (prior samples, epochs).

    Raises:
        MissingCapabilityError: no prior.
        ConfigError: invalid values, unknown stage names, too few radii, absolute radii not given.
    """

    def __init__(
        self,
        *,
        prior: Prior | None = None,
        steps_per_stage: int = 1000,
        restarts: int = 4,
        lr: float = 0.3,
        feature_lr: Literal["relative", "absolute"] = "relative",
        feature_lr_scale: float = 1.0,
        radius_mode: Literal["relative", "absolute"] = "relative",
        radii: list[float] | None = None,
        latent_radii: list[float] | None = None,
        stages: list[str | int] | None = None,
        ball: bool = True,
        selection: Literal["least_distance", "held_out", "agreement", "last"] = "least_distance",
        holdout: float = 0.1,
        holdout_seed: int = 0,
        carry: Literal["best", "final"] = "best",
        tv: float = 1e-4,
        image_norm: float = 1e-6,
        distance: str = "cosine",
        prune_ratio: float = 0.0,
        labels: str = "auto",
        schedule: str = "ramp",
        adaptive: bool = False,
        fedavg: str = "strong",
        compile: bool | str = "auto",
        device: str | torch.device = "auto",
        log_every: int = 50,
        label_mapping: bool = False,
        coarse_steps: int = 100,
        remapper_samples: int = 6000,
        remapper_epochs: int = 4,
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
        self.steps_per_stage = check_count("steps_per_stage", steps_per_stage)
        if not isinstance(label_mapping, bool):
            raise ConfigError(f"attack.label_mapping must be true or false, got {label_mapping!r}")
        if label_mapping and not self.prior.is_conditional:
            raise ConfigError(
                "attack.label_mapping=true needs a class-conditional prior (e.g. prior=fashion or prior=biggan);"
                f" {type(self.prior).__name__} has no classes"
            )
        self.label_mapping = label_mapping
        self.coarse_steps = check_count("coarse_steps", coarse_steps)
        self.remapper_samples = check_count("remapper_samples", remapper_samples)
        self.remapper_epochs = check_count("remapper_epochs", remapper_epochs)
        self.lr = check_number("lr", lr, positive=True)
        self.feature_lr = check_choice("feature_lr", feature_lr, ["relative", "absolute"])
        self.feature_lr_scale = check_number("feature_lr_scale", feature_lr_scale, positive=True)
        self.radius_mode = check_choice("radius_mode", radius_mode, ["relative", "absolute"])
        if not isinstance(ball, bool):
            raise ConfigError(f"attack.ball must be true or false, got {ball!r}")
        self.ball = ball
        self.selection = check_choice("selection", selection, ["least_distance", "held_out", "agreement", "last"])
        holdout = check_number("holdout", holdout, positive=True)
        if not holdout < 1:
            raise ConfigError(f"attack.holdout must lie in (0, 1), got {holdout}")
        if self.selection == "held_out":
            self.holdout = holdout
            self.holdout_seed = check_count("holdout_seed", holdout_seed, minimum=0)
        if self.selection == "agreement" and self.restarts < 2:
            raise ConfigError("attack.selection=agreement compares restarts: it needs attack.restarts ≥ 2")
        self.carry = check_choice("carry", carry, ["best", "final"])
        self.schedule = validate_schedule(schedule)
        self.stage_indices = resolve_stages(self.prior, stages)
        last = self.stage_indices[-1]
        given = check_radii("radii", radii)
        if given is None and self.radius_mode == "absolute" and self.ball and last > 0:
            raise ConfigError(
                "attack.radius_mode=absolute needs attack.radii (one ℓ1 radius per feature stage; e.g. the"
                " official BigGAN schedule in fedinvert.attacks.generative.gifd.OFFICIAL_SETTINGS)"
            )
        if given is None:
            given = interpolate_radii(DEFAULT_RELATIVE_RADII, self.prior.num_stages - 1)
        if self.ball and len(given) < last:
            raise ConfigError(
                f"attack.radii has {len(given)} entries, but stage {last} ({self.prior.stage_names[last]}) needs"
                f" radii[{last - 1}]: give one radius per feature stage"
            )
        self.radii = given
        self.latent_radii = check_radii("latent_radii", latent_radii)
        if self.ball and self.latent_radii is not None and len(self.latent_radii) <= last:
            raise ConfigError(
                f"attack.latent_radii has {len(self.latent_radii)} entries, but stage {last} needs"
                f" latent_radii[{last}]: give one radius per stage, the latent stage included"
            )

    def stage_radii(self, k: int) -> tuple[float | None, float | None]:
        """(feature radius, latent radius) of stage k; None where there is no ball."""
        if not self.ball:
            return None, None
        feature = self.radii[k - 1] if k >= 1 else None
        latent = self.latent_radii[k] if self.latent_radii is not None else None
        return feature, latent

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        """Run the staged search on ``obs``; see the class docstring. ``rng`` draws the restarts' latents.

        With ``label_mapping``: a coarse pass (``coarse_steps`` a stage) conditioned on the FL labels, the
        remapper's reading of its best image as the generator's labels, then the full schedule from the same
        starting latents re-conditioned on them; the FL loss keeps the FL labels throughout.
        """
        setup = self.prepare(obs)
        with torch.no_grad():
            latents = self.sample_latents(setup.batch_size, rng)
        mapping: dict[str, Any] | None = None
        coarse_evaluations = 0
        coarse_history: list[dict[str, Any]] = []
        if self.label_mapping:
            coarse = self._run_stages(obs, setup, latents, steps=self.coarse_steps, progress=progress, tag="coarse ")
            coarse_evaluations, coarse_history = coarse.evaluations, coarse.history
            if coarse.interrupted or not coarse.results:
                mapping = {"skipped": "interrupted during the coarse pass"}
            else:
                best = min(coarse.results, key=lambda s: s.distance)
                remapper = train_remapper(
                    self.prior, obs.image_shape, samples=self.remapper_samples, epochs=self.remapper_epochs
                )
                mapped = remapper.predict(best.images).to(self.device)
                setup = Setup(
                    batch_size=setup.batch_size,
                    labels=setup.labels,
                    generator_labels=mapped,
                    cond=self.prior.condition(mapped.to(self.prior.device)),
                )
                mapping = {
                    "coarse_stage": best.name,
                    "coarse_distance": best.distance,
                    "coarse_labels": coarse.generator_labels,
                    "mapped_labels": mapped.cpu().tolist(),
                    "remapper_accuracy": remapper.accuracy,
                }
                log.info("label mapping: FL labels %s -> generator labels %s", setup.labels.tolist(), mapped.tolist())
        run = self._run_stages(obs, setup, latents, steps=self.steps_per_stage, progress=progress, tag="")
        results = run.results
        if not results:
            if run.interrupted:
                raise KeyboardInterrupt("GIFD was interrupted before its first stage finished a step")
            raise ObservationError(
                "GIFD found no finite gradient distance in any stage (NaN or inf everywhere); check the"
                " observation (victim, update) and the prior"
            )
        chosen = results[self._choose(run)]
        extras: dict[str, Any] = {
            "stage": chosen.name,
            "restart": chosen.restart,
            "stage_summary": run.summary,
            "generator_labels": setup.generator_labels.cpu().tolist(),
            "compile_seconds": run.compile_seconds,
        }
        if mapping is not None:
            extras["label_mapping"] = mapping
        return Reconstruction(
            images=chosen.images,
            labels=setup.labels.cpu(),
            score=chosen.distance,
            history=coarse_history + run.history,
            stages=results,
            iterations=coarse_evaluations + run.evaluations,
            interrupted=run.interrupted,
            extras=extras,
        )

    def _run_stages(
        self, obs: Observation, setup: Setup, latents: Tensor, *, steps: int, progress: bool, tag: str
    ) -> _StagedRun:
        """One pass of the stage schedule from ``latents`` (R·B, ...) under ``setup``'s conditioning."""
        prior = self.prior
        cond = repeat_restarts(setup.cond, self.restarts)
        regularizer = image_regularizer(tv=self.tv, norm=self.image_norm)
        run = _StagedRun(generator_labels=setup.generator_labels.cpu().tolist())
        last = self.stage_indices[-1]
        judge = None
        if self.selection == "held_out":
            judge = GradientMatcher(obs, distance=self.distance, prune_ratio=self.prune_ratio,
                                    render=lambda *v: (v[0], v[1]), adaptive=self.adaptive, fedavg=self.fedavg,
                                    holdout=self.holdout, holdout_seed=self.holdout_seed, device=self.device)
        try:
            with torch.no_grad():
                variables = prior.initial_variables(latents, cond)
            for k in range(last + 1):
                if k in self.stage_indices:
                    t0 = time.perf_counter()
                    radius, latent_radius = self.stage_radii(k)
                    name = prior.stage_names[k]
                    found = self.search_stage(
                        obs,
                        setup,
                        k,
                        variables,
                        steps=steps,
                        lr=self.lr if k == 0 else self.lr * self.feature_lr_scale,
                        schedule=self.schedule,
                        relative_lr=self.feature_lr == "relative",
                        radius=radius,
                        latent_radius=latent_radius,
                        relative_radius=self.radius_mode == "relative",
                        regularizer=regularizer,
                        progress=progress,
                        description=tag + name,
                        carry=self.carry,
                    )
                    run.evaluations += found.evaluations
                    run.compile_seconds += found.compile_seconds
                    run.history.extend(found.history)
                    variables = found.variables
                    if torch.isfinite(found.distance).any():
                        best = int(torch.argmin(found.distance))
                        every = self.stage_images(obs, setup, k, variables)  # (R, B, C, H, W)
                        images = every[best]
                        run.results.append(StageResult(name, images, float(found.distance[best]), restart=best))
                        row: dict[str, Any] = {
                            "stage": name,
                            "distance": float(found.distance[best]),
                            "restart": best,
                            "restart_distances": found.distance.tolist(),
                            "seconds": time.perf_counter() - t0 - found.compile_seconds,
                        }
                        if judge is not None:
                            inputs = self.victim_inputs(obs, images.to(self.device))
                            row["heldout_distance"] = judge.heldout_distance(inputs, setup.labels)
                            run.evaluations += 1
                        if self.restarts > 1:
                            flat = every.flatten(1)
                            pairs = torch.cdist(flat, flat).pow(2) / flat.shape[1]
                            r = self.restarts
                            row["disagreement"] = float(pairs.sum() / (r * (r - 1)))
                        run.summary.append(row)
                        log.info("GIFD %sstage %s: distance %.4g (restart %d)", tag, name, found.distance[best], best)
                    if found.interrupted:
                        run.interrupted = True
                        break
                if k < last:
                    with torch.no_grad():
                        variables = prior.advance(k, variables, cond)
        except KeyboardInterrupt:
            run.interrupted = True
            log.warning("GIFD interrupted; returning the best stage so far")
        return run

    def _choose(self, run: _StagedRun) -> int:
        """Index into ``run.results`` of the answer under ``selection`` (see the class docstring)."""
        if self.selection == "last":
            return len(run.results) - 1
        key = {"least_distance": "distance", "held_out": "heldout_distance", "agreement": "disagreement"}[
            self.selection
        ]
        scores = [row[key] for row in run.summary]
        return min(range(len(scores)), key=lambda i: (not math.isfinite(scores[i]), scores[i]))

    def generator_labels(self, obs: Observation, labels: Tensor) -> Tensor:
        """The FL labels condition the prior, folded into its classes when there are more (the coarse pass of
        label mapping may see FL labels the prior does not have)."""
        if self.label_mapping and self.prior.num_classes is not None:
            return labels % self.prior.num_classes
        return labels


@dataclass
class _StagedRun:
    """What one pass of the stage schedule found."""

    generator_labels: list[int]
    results: list[StageResult] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    compile_seconds: float = 0.0
    interrupted: bool = False


def resolve_stages(prior: Prior, stages: Sequence[str | int] | None) -> list[int]:
    """Stage indices (sorted, unique) from names or indices (negative counts from the end); None = all."""
    count = prior.num_stages
    if stages is None:
        return list(range(count))
    if isinstance(stages, (str, int)):
        stages = [stages]
    indices: list[int] = []
    for entry in stages:
        if isinstance(entry, bool):
            raise ConfigError(f"attack.stages entries are stage names or indices, got {entry!r}")
        if isinstance(entry, int):
            if not -count <= entry < count:
                raise ConfigError(f"attack.stages: {prior.name} has stages 0..{count - 1}, got {entry}")
            indices.append(entry % count)
        elif entry in prior.stage_names:
            indices.append(prior.stage_names.index(entry))
        else:
            raise ConfigError(
                f"attack.stages: {prior.name} has no stage {entry!r}; its stages are {', '.join(prior.stage_names)}"
            )
    if not indices:
        raise ConfigError("attack.stages must name at least one stage")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"attack.stages names a stage twice: {list(stages)}")
    return sorted(indices)


ATTACKS.add("gifd", GIFD)
#: GIFD-z: the latent stage only (journal ablation).
ATTACKS.add("gifd-z", GIFD, stages=[0])
#: GIFD-f: latent and all feature stages without ℓ1 balls, each stage carrying its final iterate (official);
#: the last stage is the answer.
ATTACKS.add("gifd-f", GIFD, ball=False, selection="last", carry="final")
#: GIFD-e: as GIFD-f, but the least-distance stage is the answer.
ATTACKS.add("gifd-e", GIFD, ball=False, carry="final")
#: The official settings as keyword presets: ``GIFD(prior=biggan, **OFFICIAL_SETTINGS["biggan"])``. Absolute
#: learning rate 0.1 and absolute radii; BigGAN-deep: latent + K = 9 feature stages (journal), StyleGAN2: latent +
#: K = 4 feature stages with balls on w and the noise maps too. Not registered as attacks: they name stages that
#: only those priors have.
OFFICIAL_SETTINGS: dict[str, dict[str, Any]] = {
    "biggan": {
        "lr": 0.1,
        "carry": "final",
        "feature_lr": "absolute",
        "radius_mode": "absolute",
        "radii": BIGGAN_RADII,
        "stages": list(range(10)),
    },
    "stylegan2": {
        "lr": 0.1,
        "carry": "final",
        "feature_lr": "absolute",
        "radius_mode": "absolute",
        "radii": STYLEGAN2_RADII,
        "latent_radii": STYLEGAN2_LATENT_RADII,
        "stages": list(range(5)),
    },
}
