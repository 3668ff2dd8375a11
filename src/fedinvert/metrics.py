"""Scoring a reconstruction against the private batch (DESIGN §8, §12 "metrics.json").

All image metrics work on un-normalised images in [0, 1] of shape (B, C, H, W) and return one value per
image. ``evaluate`` first pairs every private image with a reconstruction (Hungarian assignment on the
per-image MSE, scipy) and then scores the pairs; its result is plain Python data, ready for ``json.dumps``.
``no_leak_reference`` scores what an attacker reaches from public images alone, ``attach_reference`` adds it
and ``leakage_db`` to a result, and ``reid_top1`` is the re-identification rate (docs/metrics.md).
ST-LPIPS and LPIPS live in ``fedinvert.perceptual``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from pytorch_msssim import ssim as _msssim_ssim
from torch import Tensor, nn

from fedinvert.models import penultimate_features
from fedinvert.registry import Registry

PSNR_CAP_DB = 100.0
"""Upper bound of the per-image PSNR, so that exact recovery (MSE 0) stays a finite, valid JSON number."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5

METRICS: Registry[Tensor] = Registry("metric")
"""Per-image metrics ``f(a, b) -> Tensor(B)`` on [0, 1] images; ``evaluate`` reports every entry."""


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(
            f"expected two (B, C, H, W) image batches of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def mse_per_image(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per image.

    Args:
        a, b: (B, C, H, W) images in [0, 1].

    Returns:
        (B,) MSE of each pair, in [0, 1] for images in [0, 1].
    """
    _check_pair(a, b)
    return (a.float() - b.float()).square().flatten(1).mean(1)


def psnr_per_image(a: Tensor, b: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image in dB, data range 1, capped at ``PSNR_CAP_DB`` (100 dB).

    PSNR = 10 · log10(1 / MSE); identical images (MSE 0) score the cap instead of infinity.

    Args:
        a, b: (B, C, H, W) images in [0, 1].

    Returns:
        (B,) PSNR in dB, at most 100.
    """
    mse = mse_per_image(a, b)
    psnr = -10.0 * torch.log10(mse.clamp_min(torch.finfo(mse.dtype).tiny))
    return psnr.clamp(max=PSNR_CAP_DB)


def ssim_window(height: int, width: int) -> int:
    """The SSIM window size used for (H, W) images: 11, shrunk to the largest odd size ≤ min(H, W).

    Images smaller than 11 px therefore get a smaller Gaussian window (σ stays 1.5); 1- and 2-px images get a
    window of 1, i.e. SSIM of single pixels averaged over the image.
    """
    side = min(int(height), int(width), SSIM_WINDOW)
    return side if side % 2 == 1 else side - 1


def ssim_per_image(a: Tensor, b: Tensor) -> Tensor:
    """Structural similarity per image (Wang et al., 2004) from ``pytorch_msssim.ssim``.

    Gaussian window of size 11 and σ 1.5 (shrunk to ``ssim_window(H, W)`` for small images), K = (0.01, 0.03),
    data range 1, the mean over the valid (unpadded) window positions and over channels.

    Args:
        a, b: (B, C, H, W) images in [0, 1], with H, W ≥ 2.

    Returns:
        (B,) SSIM in [−1, 1]; 1 for identical images.
    """
    _check_pair(a, b)
    height, width = a.shape[-2:]
    if min(height, width) < 2:
        raise ValueError(f"SSIM needs images of at least 2×2 pixels, got {height}×{width}")
    return _msssim_ssim(
        a.float(),
        b.float(),
        data_range=1.0,
        size_average=False,
        win_size=ssim_window(height, width),
        win_sigma=SSIM_SIGMA,
    )


METRICS.add("mse", mse_per_image)
METRICS.add("psnr", psnr_per_image)
METRICS.add("ssim", ssim_per_image)


def match(private: Tensor, reconstructed: Tensor) -> Tensor:
    """Pair every private image with a distinct reconstruction, minimising the total per-image MSE.

    Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on the B_p × B_r matrix of MSEs between
    private image i and reconstruction j, both in [0, 1]. Attacks return their images in no particular order,
    so scoring without this step would punish a correct reconstruction in the wrong slot.

    Args:
        private: (B_p, C, H, W) private images in [0, 1].
        reconstructed: (B_r, C, H, W) reconstructions in [0, 1], with B_r ≥ B_p. When B_r > B_p the
            assignment chooses the B_p reconstructions that fit best; the others are left out.

    Returns:
        (B_p,) LongTensor ``perm`` of distinct indices into ``reconstructed`` such that ``reconstructed[perm][i]``
        is the reconstruction paired with ``private[i]``.

    Raises:
        ValueError: different image shapes, or fewer reconstructions than private images (an attack must
            return at least one image per private image).
    """
    if private.dim() != 4 or reconstructed.dim() != 4 or private.shape[1:] != reconstructed.shape[1:]:
        raise ValueError(
            f"expected (B, C, H, W) batches of the same image shape, got {tuple(private.shape)}"
            f" and {tuple(reconstructed.shape)}"
        )
    if len(reconstructed) < len(private):
        raise ValueError(
            f"cannot match {len(private)} private images with only {len(reconstructed)} reconstructions"
        )
    if len(private) == len(reconstructed) == 1:
        return torch.zeros(1, dtype=torch.long)  # one pair: nothing to assign
    from scipy.optimize import linear_sum_assignment  # imported here: 0.4 s a short run needs only for B > 1

    # the assignment is solved on the host: move there first, then widen (no float64 copy on a GPU)
    p = private.detach().flatten(1).cpu().double()
    r = reconstructed.detach().flatten(1).cpu().double()
    # the direct (not matrix-product) form keeps MSE 0 exact for identical images
    cost = torch.cdist(p, r, compute_mode="donot_use_mm_for_euclid_dist").square() / p.shape[1]
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = torch.empty(len(private), dtype=torch.long)
    perm[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    return perm


def label_accuracy(
    true_labels: Tensor | Sequence[int], rec_labels: Tensor | Sequence[int] | None
) -> float | None:
    """Fraction of the private labels that the attack recovered, compared as multisets.

    The overlap of the two multisets divided by the number of private labels B, so order does not matter and
    a label recovered twice counts only as often as it occurs in the batch: [1, 1, 2] vs [1, 2, 2] → 2/3.

    Args:
        true_labels: (B,) private labels.
        rec_labels: the attack's labels, or None when it returns none.

    Returns:
        A float in [0, 1], or None when ``rec_labels`` is None.
    """
    if rec_labels is None:
        return None
    truth = [int(v) for v in (true_labels.tolist() if isinstance(true_labels, Tensor) else true_labels)]
    guess = [int(v) for v in (rec_labels.tolist() if isinstance(rec_labels, Tensor) else rec_labels)]
    if not truth:
        raise ValueError("label_accuracy needs at least one private label")
    overlap = sum((Counter(truth) & Counter(guess)).values())
    return overlap / len(truth)


def feature_distance(model: nn.Module, private_inputs: Tensor, rec_inputs: Tensor) -> Tensor:
    """Per-image MSE between the victim's penultimate features of the private and reconstructed inputs.

    The features are the inputs to the victim's last ``nn.Linear`` (``fedinvert.models.last_linear``). The
    model runs in eval mode without gradients; every submodule's train/eval flag is restored afterwards.

    Args:
        model: the victim classifier.
        private_inputs, rec_inputs: (B, C, H, W) in the victim's normalised space, paired by index.

    Returns:
        (B,) mean squared feature difference per image (≥ 0), on the model's device.
    """
    _check_pair(private_inputs, rec_inputs)
    modes = [(module, module.training) for module in model.modules()]
    device = next((p.device for p in model.parameters()), private_inputs.device)
    try:
        model.eval()
        with torch.no_grad():
            fp = penultimate_features(model, private_inputs.to(device)).float()
            fr = penultimate_features(model, rec_inputs.to(device)).float()
    finally:
        for module, mode in modes:
            module.training = mode
    return (fp - fr).square().flatten(1).mean(1)


GRADIENT_COSINE_MAX_FLOATS = 200_000_000
"""`gradient_cosine` is skipped (None) when B × parameters exceeds this (800 MB of float32 gradients)."""


def gradient_cosine(
    model: nn.Module, images: Tensor, labels: Tensor, normalization: tuple[Sequence[float], Sequence[float]]
) -> float | None:
    """Mean pairwise cosine similarity of the per-sample gradients of a private batch (the survey's
    Proposition 1: the more alike the samples' gradients — e.g. when labels repeat — the less the batch gradient
    tells them apart).

    Each sample's cross-entropy gradient over all parameters at the model's weights, in eval mode (train/eval
    flags restored). None for B = 1 or when B × parameters exceeds `GRADIENT_COSINE_MAX_FLOATS`.

    Args:
        model: the victim as the server sent it.
        images: (B, C, H, W) private images in [0, 1].
        labels: (B,) their labels.
        normalization: the client's (mean, std).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    batch = images.shape[0]
    if batch < 2 or batch * count > GRADIENT_COSINE_MAX_FLOATS:
        return None
    modes = [(module, module.training) for module in model.modules()]
    device = next((p.device for p in params), images.device)
    inputs = _normalize(images.float(), normalization).to(device)
    rows = []
    try:
        model.eval()
        for i in range(batch):
            loss = nn.functional.cross_entropy(model(inputs[i : i + 1]), labels[i : i + 1].to(device))
            grads = torch.autograd.grad(loss, params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]).float())
    finally:
        for module, mode in modes:
            module.training = mode
    unit = nn.functional.normalize(torch.stack(rows), dim=1)
    gram = unit @ unit.T
    off = gram[~torch.eye(batch, dtype=torch.bool, device=gram.device)]
    return float(off.mean())


def _normalize(images: Tensor, normalization: tuple[Sequence[float], Sequence[float]]) -> Tensor:
    mean, std = normalization
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    if m.shape[1] not in (1, images.shape[1]) or s.shape[1] not in (1, images.shape[1]):
        raise ValueError(
            f"normalization must give 1 or {images.shape[1]} means and stds, got {normalization}"
        )
    return (images - m) / s


def evaluate(
    private: Tensor,
    reconstructed: Tensor,
    *,
    true_labels: Tensor | None = None,
    rec_labels: Tensor | None = None,
    model: nn.Module | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Match the reconstructions to the private batch, then score them (the ``metrics.json`` numbers).

    Args:
        private: (B, C, H, W) private images in [0, 1].
        reconstructed: (B_r, C, H, W) reconstructions in [0, 1], B_r ≥ B (see ``match``).
        true_labels: (B,) private labels, for ``label_accuracy``.
        rec_labels: the attack's labels; compared with ``true_labels`` as multisets, independent of the image
            matching.
        model: the victim, for ``feature_distance`` (needs ``normalization`` too).
        normalization: (mean, std) per channel that maps [0, 1] images to the victim's inputs.

    Returns:
        A JSON-serialisable dict: ``psnr``, ``ssim``, ``mse`` (means over the B private images; PSNR capped at
        100 dB per image), ``label_accuracy`` (None without labels), ``feature_distance`` (None without model
        and normalization), ``order`` (the ``match`` permutation as a list: reconstruction ``order[i]`` is
        paired with private image i) and ``per_image``: one dict per private image with ``index``,
        ``matched``, the per-image metrics and, when computed, ``feature_distance``.

    Raises:
        ValueError: shapes do not fit, or the images hold NaN or inf.
    """
    for what, images in (("private", private), ("reconstructed", reconstructed)):
        if not torch.isfinite(images).all():
            raise ValueError(f"the {what} images hold NaN or inf")
    private = private.detach().float()
    perm = match(private, reconstructed)
    paired = reconstructed.detach().float().to(private.device)[perm.to(private.device)]
    per_metric = {name: METRICS.get(name)(private, paired).cpu().tolist() for name in METRICS}
    distances: list[float] | None = None
    if model is not None and normalization is not None:
        distances = (
            feature_distance(model, _normalize(private, normalization), _normalize(paired, normalization))
            .cpu()
            .tolist()
        )

    per_image: list[dict[str, Any]] = []
    for i, j in enumerate(perm.tolist()):
        row: dict[str, Any] = {"index": i, "matched": int(j)}
        row.update({name: float(values[i]) for name, values in per_metric.items()})
        if distances is not None:
            row["feature_distance"] = float(distances[i])
        per_image.append(row)

    result: dict[str, Any] = {name: _mean(values) for name, values in per_metric.items()}
    result["label_accuracy"] = None if true_labels is None else label_accuracy(true_labels, rec_labels)
    result["feature_distance"] = None if distances is None else _mean(distances)
    result["order"] = [int(j) for j in perm.tolist()]
    result["per_image"] = per_image
    return result


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


# --- the no-leak reference (DESIGN §8) --------------------------------------------------------------------

REFERENCE_KINDS = ("constant", "mean_image", "random_image")
"""The no-leak guesses of ``no_leak_reference``, in the order a tie between their mean PSNRs is resolved."""


def _scores(private: Tensor, guess: Tensor) -> dict[str, Tensor]:
    return {"psnr": psnr_per_image(private, guess), "ssim": ssim_per_image(private, guess),
            "mse": mse_per_image(private, guess)}


def _summary(per_image: dict[str, Tensor]) -> dict[str, Any]:
    return {
        "psnr": float(per_image["psnr"].mean()),
        "ssim": float(per_image["ssim"].mean()),
        "mse": float(per_image["mse"].mean()),
        "per_image_psnr": [float(v) for v in per_image["psnr"].tolist()],
    }


def no_leak_reference(
    private: Tensor, public: Tensor, *, draws: int = 16, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """What an attacker scores without the update: guesses built from public images only (DESIGN §8).

    Three guesses, each scored against every private image with the ``evaluate`` metrics (PSNR capped at
    100 dB, SSIM, MSE; no matching, a guess is the same for every slot):

    - ``constant``: every pixel equals the public set's per-channel mean (the best constant image under MSE
      for an attacker who knows only the public data);
    - ``mean_image``: the pixelwise mean of the public images;
    - ``random_image``: per private image, the mean score over ``draws`` public images drawn at random
      (without replacement when the public set has at least ``draws`` images), i.e. what "a plausible image
      of this data set" scores.

    Args:
        private: (B, C, H, W) private images in [0, 1].
        public: (N, C, H, W) public images in [0, 1] of the same image shape — the data set's other split, or
            the same split without the private indices; never the private batch itself.
        draws: random public images per private image, ≥ 1 (16 or more recommended).
        generator: random source for the draws; None uses a fresh generator seeded with 0, so the reference of
            a batch is reproducible.

    Returns:
        A JSON-serialisable dict: for each kind in ``REFERENCE_KINDS`` ``{"psnr", "ssim", "mse",
        "per_image_psnr": [B floats]}`` (means over the B private images; dB, [−1, 1], [0, 1]); ``psnr`` = the
        best (highest) of the three mean PSNRs, ``ssim`` and ``mse`` of that same kind, ``best`` its name,
        ``public_images`` = N and ``draws``.

    Raises:
        ValueError: shapes do not fit, an empty set, ``draws`` < 1, or NaN/inf in the images.
    """
    if private.dim() != 4 or public.dim() != 4 or private.shape[1:] != public.shape[1:]:
        raise ValueError(
            f"expected private (B, C, H, W) and public (N, C, H, W) images of the same shape, got"
            f" {tuple(private.shape)} and {tuple(public.shape)}"
        )
    if len(private) == 0 or len(public) == 0:
        raise ValueError("no_leak_reference needs at least one private and one public image")
    if int(draws) < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    for what, images in (("private", private), ("public", public)):
        if not torch.isfinite(images).all():
            raise ValueError(f"the {what} images hold NaN or inf")
    draws = int(draws)
    private = private.detach().float().cpu()
    public = public.detach().float().cpu()
    batch = len(private)
    if generator is None:
        generator = torch.Generator().manual_seed(0)

    constant = public.mean(dim=(0, 2, 3), keepdim=True).expand_as(private)
    mean_image = public.mean(dim=0, keepdim=True).expand_as(private)
    if len(public) >= draws:
        picks = torch.stack([torch.randperm(len(public), generator=generator)[:draws] for _ in range(batch)])
    else:
        picks = torch.randint(len(public), (batch, draws), generator=generator)
    # score all B·draws (private, random public) pairs at once, then average the draws of each private image
    repeated = private.repeat_interleave(draws, dim=0)
    random_scores = {
        name: values.view(batch, draws).mean(1)
        for name, values in _scores(repeated, public[picks.flatten()]).items()
    }

    result: dict[str, Any] = {
        "constant": _summary(_scores(private, constant.contiguous())),
        "mean_image": _summary(_scores(private, mean_image.contiguous())),
        "random_image": _summary(random_scores),
    }
    best = max(REFERENCE_KINDS, key=lambda kind: result[kind]["psnr"])  # first of equals wins
    result.update(
        psnr=result[best]["psnr"],
        ssim=result[best]["ssim"],
        mse=result[best]["mse"],
        best=best,
        public_images=len(public),
        draws=draws,
    )
    return result


def reference_image(reference_kind: str, public: Tensor) -> Tensor:
    """The (1, C, H, W) guess of a deterministic reference kind (``constant`` or ``mean_image``), for figures.

    Args:
        reference_kind: ``"constant"`` or ``"mean_image"``.
        public: (N, C, H, W) public images in [0, 1].
    """
    if reference_kind == "constant":
        return public.float().mean(dim=(0, 2, 3), keepdim=True).expand(1, *public.shape[1:]).contiguous()
    if reference_kind == "mean_image":
        return public.float().mean(dim=0, keepdim=True)
    raise ValueError(f"no single image for reference kind {reference_kind!r}; use 'constant' or 'mean_image'")


def leakage_db(psnr: float | None, reference: dict[str, Any] | None) -> float | None:
    """PSNR above the no-leak reference in dB: ``psnr − reference["psnr"]``; None when either is missing.

    Positive values mean the update told the attacker more than public data alone; ≤ 0 means no leak measured.
    """
    if psnr is None or reference is None or reference.get("psnr") is None:
        return None
    return float(psnr) - float(reference["psnr"])


def attach_reference(result: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """Add the no-leak reference to an ``evaluate`` result, in place (the ``metrics.json`` keys).

    Sets ``result["reference"]`` (the ``no_leak_reference`` dict or None), ``result["leakage_db"]`` and, on
    every ``per_image`` row i, ``reference_psnr`` (the best kind's PSNR for private image i) and
    ``leakage_db`` (the row's PSNR minus it), so the per-image leakages average to the overall one. Without a
    reference every one of these is None.

    Returns:
        ``result`` itself.
    """
    result["reference"] = reference
    result["leakage_db"] = leakage_db(result.get("psnr"), reference)
    per_image_reference = None if reference is None else reference[reference["best"]]["per_image_psnr"]
    for row in result.get("per_image", []):
        if per_image_reference is None:
            row["reference_psnr"] = None
            row["leakage_db"] = None
        else:
            row["reference_psnr"] = float(per_image_reference[row["index"]])
            row["leakage_db"] = float(row["psnr"]) - row["reference_psnr"]
    return result


# --- re-identification ----------------------------------------------------------------------------------

REID_METRICS = ("mse", "ssim")


def reid_top1(
    private: Tensor, paired_reconstructions: Tensor, distractors: Tensor, *, metric: str = "mse"
) -> float:
    """Share of reconstructions whose nearest candidate is their own private image (re-identification, top-1).

    For reconstruction i the candidates are private image i and the M distractors (images of the same data
    set that are not in the private batch); with M = N − 1 distractors chance is 1 / N. A tie between the own
    image and a distractor counts as a miss: an auditor could not tell the two apart.

    Args:
        private: (B, C, H, W) private images in [0, 1].
        paired_reconstructions: (B, C, H, W) reconstructions in [0, 1], already matched, so that row i belongs
            to private image i (``evaluate``'s ``order``).
        distractors: (M, C, H, W) other images in [0, 1], M ≥ 0 (M = 0 gives 1.0 trivially).
        metric: ``"mse"`` (nearest = lowest per-image MSE) or ``"ssim"`` (nearest = highest SSIM).

    Returns:
        The share in [0, 1].

    Raises:
        ValueError: shapes do not fit, or an unknown ``metric``.
    """
    _check_pair(private, paired_reconstructions)
    if distractors.dim() != 4 or distractors.shape[1:] != private.shape[1:]:
        raise ValueError(
            f"distractors must be (M, C, H, W) images like the private ones {tuple(private.shape[1:])},"
            f" got {tuple(distractors.shape)}"
        )
    if metric not in REID_METRICS:
        raise ValueError(f"unknown re-identification metric {metric!r}; choose one of {', '.join(REID_METRICS)}")
    private = private.detach().float().cpu()
    rec = paired_reconstructions.detach().float().cpu()
    others = distractors.detach().float().cpu()
    if metric == "mse":
        if len(others) == 0:
            return 1.0
        # both sides in float64 and the direct (not matrix-product) distance, so that an exact copy scores
        # exactly 0 and the comparison is not decided by rounding
        own = (private.double() - rec.double()).square().flatten(1).mean(1)
        dist = torch.cdist(rec.flatten(1).double(), others.flatten(1).double(),
                           compute_mode="donot_use_mm_for_euclid_dist")
        nearest_other = (dist.square() / rec[0].numel()).min(dim=1).values
        hits = own < nearest_other
    else:
        own = ssim_per_image(private, rec)
        if len(others) == 0:
            return 1.0
        best_other = torch.stack([
            ssim_per_image(r.expand_as(others), others).max() for r in rec.unsqueeze(1)
        ])
        hits = own > best_other
    return float(hits.float().mean())
