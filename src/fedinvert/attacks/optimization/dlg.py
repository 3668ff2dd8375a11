"""Deep Leakage from Gradients (Zhu et al., NeurIPS 2019) and improved DLG (Zhao et al., 2020)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

import torch
from torch import Tensor

from fedinvert.attacks import compilation
from fedinvert.attacks.base import ATTACKS, Attack, batch_size_of
from fedinvert.attacks.labels import infer_labels
from fedinvert.attacks.objectives import FEDAVG_MODES, GradientMatcher
from fedinvert.errors import ConfigError
from fedinvert.observation import Observation, Reconstruction

log = logging.getLogger(__name__)


@ATTACKS.register("dlg")
class DLG(Attack):
    """DLG: L2 gradient distance, dummy image and soft labels optimised jointly with L-BFGS.

    Args:
        iterations: L-BFGS ``step`` calls per restart (DLG: 300); each may evaluate the objective up to
            ``max_eval`` times.
        restarts: independent random starts, run one after another; the least distance wins.
        lr: L-BFGS learning rate (1.0).
        distance: gradient distance (DLG: ``l2``).
        line_search: ``strong_wolfe`` or ``none``.
        joint_labels: optimise soft labels jointly (DLG) or infer them from the update (iDLG).
        labels: label inference method when labels are not optimised jointly.
        adaptive: replay the declared defences' deterministic transforms on the dummy update (`GradientMatcher`).
        fedavg: for FedAvg weight deltas, ``strong`` (unroll the known local training), ``weak`` (unroll the
            survey's guess: batch 8, 2 epochs, lr 1e-3) or ``none`` (treat −Δ/η as one gradient).
    """

    joint_labels_default = True

    def __init__(
        self,
        *,
        iterations: int = 300,
        restarts: int = 1,
        lr: float = 1.0,
        distance: str = "l2",
        line_search: Literal["none", "strong_wolfe"] = "none",
        max_eval: int | None = None,
        labels: str = "auto",
        joint_labels: bool | None = None,
        adaptive: bool = False,
        fedavg: str = "strong",
        compile: bool | str = "auto",
        device: str | torch.device = "auto",
        log_every: int = 10,
    ) -> None:
        super().__init__(device=device, log_every=log_every)
        if iterations < 1 or restarts < 1:
            raise ConfigError(f"attack.iterations and attack.restarts must be ≥ 1, got {iterations}, {restarts}")
        if line_search not in ("none", "strong_wolfe"):
            raise ConfigError(f"attack.line_search must be none or strong_wolfe, got {line_search!r}")
        self.iterations = int(iterations)
        self.restarts = int(restarts)
        self.lr = float(lr)
        self.distance = distance
        self.line_search = None if line_search == "none" else line_search
        self.max_eval = max_eval
        self.labels = labels
        self.joint_labels = self.joint_labels_default if joint_labels is None else bool(joint_labels)
        if fedavg not in FEDAVG_MODES:
            raise ConfigError(f"attack.fedavg must be one of {', '.join(FEDAVG_MODES)}, got {fedavg!r}")
        self.adaptive = bool(adaptive)
        self.fedavg = fedavg
        self.compile = compilation.check_setting(compile)

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        from tqdm.auto import tqdm

        size = batch_size_of(obs)
        known = None if self.joint_labels else infer_labels(obs, method=self.labels, batch_size=size).to(self.device)

        def render(x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
            labels = y if known is None else known
            assert labels is not None  # the joint search passes its label variable
            return x, labels

        def build(form: str) -> GradientMatcher:
            return GradientMatcher(
                obs,
                distance=self.distance,
                render=render,
                adaptive=self.adaptive,
                fedavg=self.fedavg,
                device=self.device,
                **compilation.matcher_flags(form),
            )

        # the probe's variables: any values of the search's shapes (the rng stays untouched)
        shapes = [(1, size, *obs.image_shape)] + ([(1, size, obs.num_classes)] if known is None else [])
        probe_variables = [torch.full(shape, 0.5, device=self.device) for shape in shapes]
        matcher, decision = compilation.choose(
            self.compile,
            steps=self.iterations * self.restarts * 20,  # L-BFGS evaluates the step up to 20 times an iteration
            build=build,
            probe=lambda candidate: candidate.step(probe_variables),
            key=lambda: compilation.step_key(type(self).__name__, [obs.model], shapes, self.device),
            tensors=lambda: compilation.parameter_tensors(obs.model),
            device=self.device,
        )
        history: list[dict] = []
        best_images: Tensor | None = None
        best_labels: Tensor | None = None
        best_distance = float("inf")
        interrupted = False
        start = time.perf_counter()
        bar = tqdm(total=self.iterations * self.restarts, desc=type(self).__name__, disable=not progress, leave=False)
        for restart in range(self.restarts):
            x = torch.randn((1, size, *obs.image_shape), generator=rng).to(self.device).requires_grad_(True)
            variables = [x]
            if known is None:
                y = torch.randn((1, size, obs.num_classes), generator=rng).to(self.device).requires_grad_(True)
                variables.append(y)
            try:
                self._run_restart(matcher, variables, restart, history, bar, start)
            except KeyboardInterrupt:
                interrupted = True
                log.warning("interrupted; returning the best result so far")
            best_images, best_labels, best_distance = self._keep_best(
                obs, matcher, variables, known, best_images, best_labels, best_distance
            )
            if interrupted:
                break
        bar.close()
        if best_images is None:
            best_images = torch.rand((size, *obs.image_shape))
        return Reconstruction(
            images=best_images,
            labels=best_labels,
            score=best_distance,
            history=history,
            iterations=matcher.evaluations,
            interrupted=interrupted,
            extras={"compile_seconds": matcher.compile_seconds, "compile": compilation.finished(decision, matcher)},
        )

    def _run_restart(
        self,
        matcher: GradientMatcher,
        variables: list[Tensor],
        restart: int,
        history: list[dict],
        bar: Any,
        start: float,
    ) -> None:
        """L-BFGS on one restart's variables, in place; logs the distance every ``log_every`` steps."""
        optimizer = torch.optim.LBFGS(variables, lr=self.lr, line_search_fn=self.line_search, max_eval=self.max_eval)
        last: dict[str, Tensor] = {}

        def closure() -> Tensor:
            optimizer.zero_grad()
            grads, loss, dist = matcher.step(variables)
            for v, g in zip(variables, grads, strict=True):
                v.grad = g
            last["distance"] = dist
            return loss.sum()

        for it in range(self.iterations):
            optimizer.step(closure)
            bar.update(1)
            if (it + 1) % self.log_every == 0 or it + 1 == self.iterations:
                d = float(last["distance"].min())
                history.append({"restart": restart, "step": it + 1, "distance": d, "seconds": time.perf_counter() - start})
                if not math.isfinite(d):
                    log.warning("DLG diverged (non-finite distance) in restart %d", restart)
                    return

    def _keep_best(
        self,
        obs: Observation,
        matcher: GradientMatcher,
        variables: list[Tensor],
        known: Tensor | None,
        best_images: Tensor | None,
        best_labels: Tensor | None,
        best_distance: float,
    ) -> tuple[Tensor | None, Tensor | None, float]:
        x = variables[0][0].detach()
        if not torch.isfinite(x).all():
            return best_images, best_labels, best_distance
        labels = known if known is not None else variables[1][0].detach()
        distance = matcher.distance(x, labels)
        if distance < best_distance or best_images is None:
            images = obs.denormalize(x).clamp(0, 1).cpu()
            hard = labels if known is not None else labels.argmax(-1)
            return images, hard.cpu(), distance
        return best_images, best_labels, best_distance


@ATTACKS.register("idlg")
class IDLG(DLG):
    """iDLG (Zhao et al. 2020): DLG with the label read from the last layer's update instead of optimised."""

    joint_labels_default = False
