"""Robbing the Fed (Fowl et al., "Robbing the Fed: Directly obtaining private data in federated learning with
modified models", ICLR 2022): a malicious server puts a binned linear block in front of the victim and reads
many images of a batch exactly out of its gradient.

The block's first layer has ``bins`` rows that all measure the same scalar of the input (its mean value in
the victim's normalised space, "brightness"), with biases −q_i at increasing offsets q_i taken from the
public distribution of that measurement, so row i fires (after the ReLU) for every image brighter than q_i.
Its second layer maps the bins back to the image shape, with the same column for every bin and added to the
input, so the victim follows unchanged (up to a tiny perturbation) and every bin passes the same backward
signal g_n of image n. Then dL/dW_i = Σ_{s_n ≥ q_i} g_n x_n and dL/db_i = Σ_{s_n ≥ q_i} g_n: the difference
of two consecutive bins holds only the images whose brightness falls between q_i and q_{i+1}, and when one
image falls there alone, (dL/dW_i − dL/dW_{i+1}) / (dL/db_i − dL/db_{i+1}) is that image exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fedinvert.attacks.analytic.linear_leakage import padded_images, signal_rows
from fedinvert.attacks.base import ATTACKS, Attack, ServerContext, batch_size_of
from fedinvert.errors import ConfigError, ObservationError
from fedinvert.models.imprint import ImprintBlock, ImprintedModel
from fedinvert.observation import Capability, Observation, Reconstruction


def brightness_offsets(public: Tensor, context: ServerContext, bins: int) -> Tensor:
    """The bins' offsets q_0 < … < q_{bins−1}: q_0 below any possible brightness, q_i (i ≥ 1) the i/bins
    quantile of the mean normalised value of the public images (N, C, H, W in [0, 1])."""
    mean = torch.tensor(context.normalization[0], dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(context.normalization[1], dtype=torch.float64).view(1, -1, 1, 1)
    measured = ((public.double() - mean) / std).flatten(1).mean(1)
    levels = torch.arange(1, bins, dtype=torch.float64) / bins
    inner = torch.quantile(measured, levels)
    floor = float(((0 - mean) / std).min()) - 1.0  # every image is brighter than this
    return torch.cat([torch.tensor([floor], dtype=torch.float64), inner])


@ATTACKS.register("imprint")
class Imprint(Attack):
    """Robbing the Fed's imprint attack: exact recovery of the images that fall alone in a brightness bin.

    Needs a malicious server (``threat.server=malicious``): `modify_model` inserts an `ImprintBlock` in front
    of any victim, with offsets from the public images' brightness quantiles (`brightness_offsets`);
    `reconstruct` reads the images out of the block's gradient under FedSGD. Images that share a bin with
    another come out mixed; when fewer bins than B carry an image, the rest are the normalisation mean.

    Args:
        bins: number of bins (≥ 2); 1000 in the paper.
        scale: size of the decoder's (shared) column, which sets how much the block perturbs the victim's
            input (> 0; the recovery is exact for any scale).
        tolerance: relative threshold on the bias-gradient differences below which a bin holds no image.
        seed: seed of the decoder's random direction.
    """

    requires = frozenset({Capability.MALICIOUS_MODEL})

    def __init__(
        self,
        *,
        bins: int = 1000,
        scale: float = 1e-3,
        tolerance: float = 1e-6,
        seed: int = 0,
        device: str | torch.device = "auto",
        log_every: int = 50,
    ) -> None:
        super().__init__(device=device, log_every=log_every)
        if bins < 2:
            raise ConfigError(f"attack.bins must be ≥ 2, got {bins}")
        if not scale > 0 or not math.isfinite(scale):
            raise ConfigError(f"attack.scale must be a positive number, got {scale}")
        if not 0 <= tolerance < 1:
            raise ConfigError(f"attack.tolerance must lie in [0, 1), got {tolerance}")
        self.bins = int(bins)
        self.scale = float(scale)
        self.tolerance = float(tolerance)
        self.seed = int(seed)

    def modify_model(self, model: nn.Module, context: ServerContext) -> nn.Module:
        if context.public is None or len(context.public) < 2:
            raise ConfigError("attack 'imprint' needs public images of the task's data to place its bins")
        block = ImprintBlock(image_shape=context.image_shape, bins=self.bins)
        size = math.prod(context.image_shape)
        offsets = brightness_offsets(context.public, context, self.bins)
        direction = torch.randn(size, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)
        column = self.scale / self.bins * direction / direction.norm()
        with torch.no_grad():
            block.encoder.weight.fill_(1.0 / size)
            block.encoder.bias.copy_(-offsets.float())
            block.decoder.weight.copy_(column.float()[:, None].expand(size, self.bins))
            block.decoder.bias.zero_()
        return ImprintedModel(imprint=block, victim=model)

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        size = batch_size_of(obs)
        names = [name for name, m in obs.model.named_modules() if isinstance(m, ImprintBlock)]
        if not names:
            raise ObservationError(
                "the observed model holds no ImprintBlock: imprint reads its own block, which the server inserts"
                " with threat.server=malicious (Imprint.modify_model)"
            )
        prefix = f"{names[0]}." if names[0] else ""
        gw = obs.update[f"{prefix}encoder.weight"].detach().cpu().double()
        gb = obs.update[f"{prefix}encoder.bias"].detach().cpu().double()
        dw = gw - torch.cat([gw[1:], torch.zeros_like(gw[:1])])
        db = gb - torch.cat([gb[1:], torch.zeros_like(gb[:1])])
        filled = signal_rows(db, self.tolerance)
        strongest = filled[db[filled].abs().argsort(descending=True)[:size]]
        images = padded_images(obs, dw[strongest] / db[strongest, None], size)
        return Reconstruction(
            images=images.to(self.device),
            labels=None,
            score=0.0,
            iterations=1,
            extras={"filled_bins": int(len(filled)), "bins": self.bins, "recovered": int(len(strongest))},
        )
