"""The staged-generator contract that generation-based attacks (GIFD, GGL, GIAS, ...) program against.

GIFD (Fang et al., "GIFD: A Generative Gradient Inversion Method with Feature Domain Optimization", ICCV 2023)
searches a GAN's latent space first and then, stage by stage, the feature maps between its blocks. A `Prior` is
therefore a generator cut into stages::

    stage 0 (latent) --block 0--> stage 1 --block 1--> ... --> stage K-1 --last block + output layer--> image

Stage 0 is the latent (``z``, or ``w`` for StyleGAN2). Stage k >= 1 is the input of block k, i.e. the output of
block k-1 after its normalisation and activation (or its residual sum, for residual generators). The rendered
image is not a stage: the last stage is rendered by the last block plus the output layer.

Two levels of API, both batched over the leading dimension N (restarts x images may share it):

* Simple: ``feature(k, latent, cond)`` is the stage-k tensor that ``latent`` produces, and
  ``forward_from(k, h, cond, latent=...)`` renders an image from a stage-k tensor ``h``.
  ``forward_from(k, feature(k, z, c), c, latent=z)`` equals ``forward(z, c)`` exactly.
* Named stage variables, what an attack optimises::

      variables = prior.stage_variables(k, latent, cond)      # start values, name -> tensor
      image = prior.render(k, variables, cond)                # [0, 1], (N, C, H, W) at native_shape
      next_start = prior.advance(k, variables, cond)          # stage-(k+1) start values from stage-k values

  Each name has a projection, from ``projection_kind(name)``:

  - ``"sphere"``: optimise, and after every step rescale the value so that its norm over ``sphere_dims(name)``
    equals the norm it had at the start of the stage (``renormalize`` does exactly that). Used for the
    latent ``z`` (per sample) and StyleGAN2's ``w`` (per W+ row) and noise maps (per map). An attack may in
    addition bound the deviation from the start with an l1 ball, as GIFD's StyleGAN2 configuration does.
  - ``"l1"``: optimise, and after every step project the deviation from the stage's start value onto an l1
    ball (per sample, over all non-batch dimensions); the attack owns the radius. Used for the feature ``h``.
  - ``"none"``: optimise without projection.
  - ``"fixed"``: not to be optimised; context that the later blocks read (BigGAN-deep's ``zy`` =
    concat(z, class embedding) that conditions every block, StyleGAN2's accumulated RGB ``skip``). Pass it
    back to ``render``/``advance`` unchanged.

  A name's kind never depends on the stage. Every tensor in a variables dict has the batch dimension first.
  ``render`` reads only the names it needs; inputs it does not find fall back to the prior's own buffers where
  that is documented (StyleGAN2 noise maps), otherwise it raises ConfigError naming the missing variable.

Generator weights are frozen (``requires_grad=False``) and the module stays in eval mode (``train()`` is a
no-op), so normalisation layers always use their stored statistics and a prior is a fixed, deterministic
function. An attack that fine-tunes the generator (GIAS) deep-copies the prior and re-enables gradients on the
copy, or calls it through ``torch.func.functional_call`` with its own parameters.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from fedinvert.errors import ConfigError
from fedinvert.priors.checkpoint import load_strict, read_state_dict

ProjectionKind = Literal["sphere", "l1", "none", "fixed"]
Variables = dict[str, Tensor]

#: Name of the feature variable of every stage k >= 1.
FEATURE = "h"


class Prior(nn.Module, abc.ABC):
    """A pretrained (or randomly initialised) generator cut into stages; see the module docstring.

    Subclasses build their layers so that ``state_dict()`` matches the public checkpoint layout, and implement
    `advance` (run block k) and `_render_last` (run the last block and the output layer). Everything else
    (``stage_variables``, ``feature``, ``render``, ``forward_from``, ``forward``) is derived from those two, so
    the stage-wise and the one-shot paths execute the same operations and agree bit for bit.

    Attributes:
        name: the registry name (``"face-dcgan"``, ``"biggan"``, ``"stylegan2"``).
        stage_names: one name per stage; ``stage_names[0]`` is also the name of the latent variable.
        stage_shapes: per-sample shape of each stage's main tensor (the latent, then the features ``h``).
        latent_shape: per-sample shape of the latent, e.g. ``(100,)`` or ``(18, 512)`` for StyleGAN2's W+.
        native_shape: (C, H, W) of the rendered images.
        num_classes: size of the conditioning label space, or None for an unconditional prior.
    """

    name: str = "prior"

    def __init__(
        self,
        *,
        stage_names: list[str],
        stage_shapes: list[tuple[int, ...]],
        latent_shape: tuple[int, ...],
        native_shape: tuple[int, int, int],
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if len(stage_names) != len(stage_shapes) or len(stage_names) < 1:
            raise ValueError("a prior needs one shape per stage name")
        self.stage_names = list(stage_names)
        self.stage_shapes = [tuple(s) for s in stage_shapes]
        self.latent_shape = tuple(latent_shape)
        self.native_shape = native_shape
        self.num_classes = num_classes

    # -- description ------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        """Number of stages, latent included."""
        return len(self.stage_names)

    @property
    def latent_dim(self) -> int:
        """Size of the latent's last dimension (100 for face-dcgan, 128 for BigGAN-deep, 512 for StyleGAN2)."""
        return self.latent_shape[-1]

    @property
    def is_conditional(self) -> bool:
        """True for class-conditional priors (``condition`` returns a tensor)."""
        return self.num_classes is not None

    @property
    def device(self) -> torch.device:
        """The device of the generator's weights."""
        for parameter in self.parameters():
            return parameter.device
        for buffer in self.buffers():
            return buffer.device
        return torch.device("cpu")

    # -- latent and conditioning ------------------------------------------------------------------
    def sample_latent(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` latents from the prior's latent distribution.

        Args:
            n: number of latents (>= 1).
            generator: the random stream to draw from (e.g. ``fedinvert.seeding.generator(seed, "attack")``);
                it may live on the CPU while the prior is on an accelerator.

        Returns:
            (n, *latent_shape) on the prior's device; N(0, I) unless a subclass says otherwise.
        """
        return self._standard_normal((n, *self.latent_shape), generator=generator)

    def condition(self, labels: Tensor | None) -> Tensor | None:
        """The conditioning tensor for ``labels``: None for unconditional priors (labels are ignored).

        Conditional priors return one row per label and raise ConfigError for labels outside
        ``0 .. num_classes-1``.
        """
        return None

    # -- named stage variables --------------------------------------------------------------------
    def initial_variables(self, latent: Tensor, cond: Tensor | None) -> Variables:
        """Stage-0 variables for ``latent`` (N, *latent_shape): ``{stage_names[0]: latent}`` by default."""
        self._check_latent(latent)
        return {self.stage_names[0]: latent}

    @abc.abstractmethod
    def advance(self, k: int, variables: Mapping[str, Tensor], cond: Tensor | None) -> Variables:
        """Run block k: the start values of stage k+1 from the values of stage k.

        Args:
            k: the current stage, 0 <= k < num_stages - 1.
            variables: the stage-k variables (as from `stage_variables`, possibly optimised).
            cond: the conditioning from `condition` (None for unconditional priors).

        Returns:
            A new dict of stage-(k+1) variables: the feature ``h``, plus carried and fixed variables. Carried
            tensors are the input objects themselves, not copies.
        """

    @abc.abstractmethod
    def _render_last(self, variables: Mapping[str, Tensor], cond: Tensor | None) -> Tensor:
        """Run the last block and the output layer on the last stage's variables; image in [0, 1]."""

    def stage_variables(self, k: int, latent: Tensor, cond: Tensor | None) -> Variables:
        """The start values of stage k's variables for ``latent``: `initial_variables`, advanced k times.

        The returned tensors carry autograd history if ``latent`` does; an attack detaches and clones them
        before optimising. See the module docstring for names and projections.
        """
        self._check_stage(k)
        variables = self.initial_variables(latent, cond)
        for j in range(k):
            variables = self.advance(j, variables, cond)
        return variables

    def render(self, k: int, variables: Mapping[str, Tensor], cond: Tensor | None) -> Tensor:
        """Render images from stage k's variables.

        Returns:
            (N, *native_shape) in [0, 1].
        """
        self._check_stage(k)
        current: Mapping[str, Tensor] = variables
        for j in range(k, self.num_stages - 1):
            current = self.advance(j, current, cond)
        return self._render_last(current, cond)

    def projection_kind(self, name: str) -> ProjectionKind:
        """How an attack treats the variable ``name`` after each step (see the module docstring)."""
        kinds: dict[str, ProjectionKind] = {self.stage_names[0]: "sphere", FEATURE: "l1"}
        if name not in kinds:
            raise ConfigError(f"{self.name} has no stage variable {name!r}; it has {sorted(kinds)}")
        return kinds[name]

    def sphere_dims(self, name: str) -> tuple[int, ...]:
        """Dimensions over which a ``"sphere"`` variable keeps its norm (per sample for a (N, d) latent)."""
        if self.projection_kind(name) != "sphere":
            raise ConfigError(f"{self.name} variable {name!r} is not projected onto a sphere")
        return tuple(range(1, len(self.latent_shape) + 1))

    def renormalize(self, name: str, value: Tensor, start: Tensor) -> Tensor:
        """Spherical projection: ``value`` rescaled to the norm of ``start`` over ``sphere_dims(name)``.

        This is GIFD's norm-preserving latent projection, applied after every optimiser step of a stage whose
        start value was ``start``. Differentiable; rows of zeros stay zero.
        """
        dims = self.sphere_dims(name)
        target = torch.linalg.vector_norm(start, dim=dims, keepdim=True)
        current = torch.linalg.vector_norm(value, dim=dims, keepdim=True).clamp_min(
            torch.finfo(value.dtype).tiny
        )
        return value * (target / current)

    # -- simple API -------------------------------------------------------------------------------
    def feature(self, k: int, latent: Tensor, cond: Tensor | None = None) -> Tensor:
        """The stage-k tensor that ``latent`` produces: the latent itself for k = 0, else the input of block k.

        Returns:
            (N, *stage_shapes[k]).
        """
        key = self.stage_names[0] if k == 0 else FEATURE
        return self.stage_variables(k, latent, cond)[key]

    def forward_from(
        self, k: int, h: Tensor, cond: Tensor | None = None, *, latent: Tensor | None = None
    ) -> Tensor:
        """Render images from a stage-k tensor ``h`` (the latent for k = 0).

        Args:
            k: stage index.
            h: (N, *stage_shapes[k]).
            cond: conditioning from `condition`.
            latent: the latent ``h`` stems from. Priors whose later blocks also read the latent (BigGAN-deep
                conditions every block on z; StyleGAN2 reads w, noise and the RGB skip) need it for k >= 1 and
                raise ConfigError without it; face-dcgan ignores it.

        Returns:
            (N, *native_shape) in [0, 1].
        """
        self._check_stage(k)
        if k == 0:
            return self.render(0, self.initial_variables(h, cond), cond)
        if latent is None:
            variables: Variables = {}
        else:
            variables = self.stage_variables(k, latent, cond)
        variables[FEATURE] = h
        return self.render(k, variables, cond)

    def forward(self, latent: Tensor, cond: Tensor | None = None) -> Tensor:
        """Render images from latents: ``forward_from(0, latent, cond)``; (N, *native_shape) in [0, 1]."""
        return self.forward_from(0, latent, cond)

    # -- module state -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Prior:
        """A prior stays in eval mode (stored normalisation statistics); ``train()`` is a no-op."""
        return super().train(False)

    def freeze(self) -> Prior:
        """Disable gradients for every weight and switch to eval mode; returns self."""
        self.requires_grad_(False)
        return self.eval()

    # -- helpers for subclasses -------------------------------------------------------------------
    def _load_or_init(
        self, path: Path | None, *, what: str, containers: Sequence[str], init_seed: int = 0
    ) -> None:
        """Load the state dict at ``path`` with strict keys, or for None fill random weights; then freeze.

        Args:
            path: the weights file (see `read_state_dict`), or None for `_random_init` under ``init_seed``.
            what: the architecture and its configuration, for mismatch messages.
            containers: keys under which the file may nest the state dict.
        """
        if path is None:
            with seeded_init(init_seed):
                self._random_init()
        else:
            state = read_state_dict(path, what=f"{self.name} weights", containers=containers)
            load_strict(self, state, what=what, source=str(path))
        self.freeze()

    def _random_init(self) -> None:
        """Fill the weights with random values (tests and architecture work); not every prior offers it."""
        raise ConfigError(f"{self.name} has no random initialisation; give it weights")

    def _standard_normal(self, shape: tuple[int, ...], *, generator: torch.Generator | None) -> Tensor:
        if shape[0] < 1:
            raise ConfigError(f"number of latents must be at least 1, got {shape[0]}")
        where = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=where).to(self.device)

    def _check_stage(self, k: int) -> None:
        if not isinstance(k, int) or not 0 <= k < self.num_stages:
            raise ConfigError(
                f"{self.name} has stages 0..{self.num_stages - 1} ({', '.join(self.stage_names)}), got {k!r}"
            )

    def _check_block(self, k: int) -> None:
        if not isinstance(k, int) or not 0 <= k < self.num_stages - 1:
            raise ConfigError(
                f"{self.name}: advance(k) runs block k from stage k to k+1, so k must be in"
                f" 0..{self.num_stages - 2}; got {k!r}"
            )

    def _check_latent(self, latent: Tensor) -> None:
        if latent.dim() != len(self.latent_shape) + 1 or tuple(latent.shape[1:]) != self.latent_shape:
            raise ConfigError(
                f"{self.name} expects latents of shape (N, {', '.join(map(str, self.latent_shape))}),"
                f" got {tuple(latent.shape)}"
            )

    def _require(self, variables: Mapping[str, Tensor], name: str, k: int) -> Tensor:
        if name not in variables:
            hint = " (forward_from needs latent= here)" if k > 0 else ""
            raise ConfigError(
                f"stage {k} ({self.stage_names[k]}) of {self.name} reads variable {name!r}, which is missing;"
                f" got {sorted(variables)}{hint}"
            )
        return variables[name]

    def _check_labels(self, labels: Tensor) -> Tensor:
        """Validate class labels of a conditional prior: 1-D integers in 0..num_classes-1."""
        if self.num_classes is None:
            raise ConfigError(f"{self.name} is unconditional; it takes no labels")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
            raise ConfigError(
                f"{self.name} labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ConfigError(
                f"{self.name} has classes 0..{self.num_classes - 1}; got labels in"
                f" {int(labels.min())}..{int(labels.max())}"
            )
        return labels.to(self.device)


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """A context in which torch's global CPU generator is seeded with ``seed``, restored afterwards.

    Random initialisation of a prior (tests, architecture work) is thereby reproducible and leaves the caller's
    random state untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
