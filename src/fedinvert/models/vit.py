"""A small Vision Transformer victim, with optional LoRA adapters through the ``peft`` library.

Parameter-efficient fine-tuning (the TPAMI GIA survey, Guo et al. 2025, its PEFT attack): the pretrained
weights stay frozen and a client trains, and shares, only low-rank adapters. With ``lora_rank`` > 0 the
victim's trainable parameters are exactly the adapters, so the FL clients (`fedinvert.fl`), which share the
gradients of the parameters with ``requires_grad``, and the attacker's `Observation`, which expects exactly
those, see nothing else.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from fedinvert.errors import ConfigError
from fedinvert.models.base import MODELS
from fedinvert.models.layers import check_choice, check_dims

LoraTarget = Literal["qkv", "proj", "mlp"]
LORA_TARGETS: tuple[str, ...] = get_args(LoraTarget)
#: The linear layers of every block each ``lora_targets`` entry adapts (peft matches names by suffix).
TARGET_MODULES: dict[str, tuple[str, ...]] = {"qkv": ("qkv",), "proj": ("proj",), "mlp": ("fc1", "fc2")}

Position = Literal["sincos", "learned"]
POSITIONS: tuple[str, ...] = get_args(Position)

LoraInit = Literal["zero", "random"]
LORA_INITS: tuple[str, ...] = get_args(LoraInit)

PEFT_HINT = "pip install 'fedinvert[peft]' (peft==0.21.2)"


def require_peft() -> Any:
    """The ``peft`` module; ConfigError naming the extra to install when it is absent."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"model.lora_rank > 0 needs the peft library, which is not installed: {PEFT_HINT}") from None
    return peft


def sincos_position_embedding(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings of a ``grid`` × ``grid`` patch grid, (grid², dim) in [−1, 1].

    MAE's ``get_2d_sincos_pos_embed`` (He et al., CVPR 2022; also MoCo v3): the first half of the channels
    encodes the column, the second half the row, each as sin and cos of the position times the frequencies
    1 / 10000^(k / (dim/4)), k = 0 … dim/4 − 1. Patches in row-major order; ``dim`` must be a multiple of 4.
    """
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def encode(position: Tensor) -> Tensor:
        angles = position.flatten()[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection and an output ``proj``.

    Written out as softmax(q kᵀ / √d) v rather than `scaled_dot_product_attention`, whose CPU kernel has no
    double backward: gradient matching differentiates the parameter gradient with respect to the input.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim))


class MLP(nn.Module):
    """The block's feed-forward part: ``fc1`` → GELU → ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm Transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@MODELS.register("vit")
class ViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al., ICLR 2021), optionally with LoRA adapters (Hu et al.,
    ICLR 2022) injected by ``peft``.

    Non-overlapping ``patch_size`` × ``patch_size`` patches embedded by a strided convolution, a class token
    and position embeddings, ``depth`` pre-norm blocks (``heads``-head self-attention, GELU MLP of
    ``mlp_ratio`` × ``dim``), a final LayerNorm and a Linear head on the class token. Layers keep PyTorch's
    default initialisation; the class token is drawn from N(0, 0.02²) truncated at ±2σ, as in timm. No
    dropout and no BatchNorm, so the update is deterministic.

    Position embeddings (``position``): ``sincos`` (default) — fixed 2-D sine-cosine embeddings (MAE, MoCo v3),
    a buffer, of the same order as the patch embeddings, so even an untrained victim knows where each patch
    lies; ``learned`` — a parameter drawn from N(0, 0.02²) like timm's, which at initialisation leaves the
    network nearly blind to the patches' order (a trained ViT has learned large ones). Measured on an untrained
    LoRA victim (LFW, 16 px, B = 1, 4 images, Inverting Gradients 1000 steps): 21.8 dB with position
    embeddings of unit scale against 15.2 dB with timm's 0.02, about the no-leak reference.

    With ``lora_rank`` = r > 0, every linear layer ``lora_targets`` names in every block gets a LoRA adapter
    W x + (α/r)·B A x (peft's ``inject_adapter_in_model``; no adapter dropout, no adapter bias) and every
    other parameter is frozen (``requires_grad=False``): the client trains, and shares the gradients of, the
    adapters alone — and the head as well with ``lora_head``. ``model.pretrain_epochs`` trains what is
    trainable, so with LoRA on it trains the adapters and leaves the base as initialised.

    Parameter names: ``patch_embed.weight``, ``cls_token``, ``pos_embed`` (``learned``), ``blocks.{i}.attn.qkv.weight``,
    ``blocks.{i}.mlp.fc1.weight``, ``norm.weight``, ``head.weight`` ...; an adapted layer's base weight becomes
    ``blocks.{i}.attn.qkv.base_layer.weight`` and its adapters ``blocks.{i}.attn.qkv.lora_A.default.weight``
    (r × in) and ``blocks.{i}.attn.qkv.lora_B.default.weight`` (out × r).

    Args:
        in_channels: image channels C (≥ 1).
        num_classes: number of classes (≥ 2).
        image_size: side H = W of the square input images in pixels (≥ 8, a multiple of ``patch_size``).
        patch_size: side of the square patches in pixels (≥ 1; 4 gives 16 tokens at 16 px, 64 at 32 px).
        dim: token width (≥ 1, a multiple of ``heads``; of 4 for ``sincos``).
        depth: number of Transformer blocks (≥ 1).
        heads: attention heads per block (≥ 1).
        mlp_ratio: hidden width of each MLP as a multiple of ``dim`` (> 0).
        position: ``sincos`` or ``learned`` position embeddings (see above).
        lora_rank: rank r of the LoRA adapters; 0 (default) trains and shares every parameter. Needs ``peft``
            (the ``[peft]`` extra).
        lora_alpha: LoRA scaling α (> 0); the adapter's output is scaled by α / r (peft's default 8).
        lora_targets: which linear layers of each block get adapters: ``qkv`` (the attention's input
            projection; default, the original LoRA recipe), ``proj`` (its output projection), ``mlp`` (``fc1``
            and ``fc2``).
        lora_init: ``zero`` — peft's default, A Kaiming-uniform and B = 0, so a round right after the adapters
            were created, in which A's gradient is zero and only B's carries information; ``random`` — B drawn
            like A (peft's ``init_lora_weights=False``), an adapter that has trained for a while.
        lora_head: also train, and share the gradient of, the classification head (PEFT fine-tuning on a new
            label space usually does; label inference from the update needs it). Default false: adapters only.

    Input (B, C, image_size, image_size) in the victim's normalised space; output logits (B, num_classes).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        position: Position = "sincos",
        lora_rank: int = 0,
        lora_alpha: float = 8.0,
        lora_targets: tuple[LoraTarget, ...] = ("qkv",),
        lora_init: LoraInit = "zero",
        lora_head: bool = False,
    ) -> None:
        super().__init__()
        check_dims("vit", in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        ViT.check_options(
            {"patch_size": patch_size, "dim": dim, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio,
             "position": position, "lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_targets": lora_targets,
             "lora_init": lora_init},
            image_size=image_size,
        )
        self.patch_size = int(patch_size)
        self.grid = int(image_size) // self.patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-0.04, b=0.04)
        self.pos_embed: Tensor
        if position == "learned":
            self.pos_embed = nn.Parameter(torch.empty(1, self.grid * self.grid + 1, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)
        else:  # the class token's position is zero, as in MAE
            table = torch.cat([torch.zeros(1, dim), sincos_position_embedding(self.grid, dim)]).unsqueeze(0)
            self.register_buffer("pos_embed", table)
        hidden = max(1, round(float(mlp_ratio) * dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden) for _ in range(int(depth))))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)  # registered last: `last_linear` finds it
        self.lora_rank = int(lora_rank)
        if self.lora_rank > 0:
            self._inject_lora(float(lora_alpha), tuple(lora_targets), lora_init, bool(lora_head))

    @staticmethod
    def check_options(options: Mapping[str, Any], *, image_size: int | None = None) -> None:
        """Raise ConfigError unless the (checked-type) ``options`` describe a buildable ViT; with
        ``lora_rank`` > 0, unless ``peft`` is installed. Called by the config validation before any work."""
        options = {**_option_defaults(), **options}
        patch, dim, heads = int(options["patch_size"]), int(options["dim"]), int(options["heads"])
        for key in ("patch_size", "dim", "depth", "heads"):
            if int(options[key]) < 1:
                raise ConfigError(f"model 'vit': {key} must be at least 1, got {options[key]}")
        if not float(options["mlp_ratio"]) > 0:
            raise ConfigError(f"model 'vit': mlp_ratio must be positive, got {options['mlp_ratio']}")
        if dim % heads:
            raise ConfigError(f"model 'vit': dim must be a multiple of heads, got dim={dim}, heads={heads}")
        check_choice("vit", "position", options["position"], POSITIONS)
        if options["position"] == "sincos" and dim % 4:
            raise ConfigError(f"model 'vit': sincos position embeddings need dim a multiple of 4, got dim={dim}")
        if image_size is not None and int(image_size) % patch:
            raise ConfigError(
                f"model 'vit': image_size must be a multiple of patch_size; got image_size={image_size},"
                f" patch_size={patch}"
            )
        rank = int(options["lora_rank"])
        if rank < 0:
            raise ConfigError(f"model 'vit': lora_rank must be 0 (no LoRA) or a positive rank, got {rank}")
        if not float(options["lora_alpha"]) > 0:
            raise ConfigError(f"model 'vit': lora_alpha must be positive, got {options['lora_alpha']}")
        targets: Sequence[str] = options["lora_targets"]
        if isinstance(targets, str) or not targets:
            raise ConfigError(f"model 'vit': lora_targets must be a non-empty list of {', '.join(LORA_TARGETS)}")
        for target in targets:
            check_choice("vit", "lora_targets", target, LORA_TARGETS)
        check_choice("vit", "lora_init", options["lora_init"], LORA_INITS)
        if rank > 0:
            require_peft()

    def _inject_lora(self, alpha: float, targets: tuple[str, ...], init: str, head: bool) -> None:
        """Add peft LoRA adapters to the ``targets`` layers of every block and freeze everything else."""
        peft = require_peft()
        modules = sorted({m for t in dict.fromkeys(targets) for m in TARGET_MODULES[t]})
        config = peft.LoraConfig(
            r=self.lora_rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=modules,
            init_lora_weights=init == "zero",
        )
        peft.inject_adapter_in_model(config, self)  # in place; freezes every parameter but the adapters'
        self.head.requires_grad_(head)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim), patches in row-major order
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = self.blocks(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        return self.head(self.norm(h)[:, 0])


def _option_defaults() -> dict[str, Any]:
    """The keyword defaults of `ViT` (what an option left out of a config means)."""
    parameters = inspect.signature(ViT.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
