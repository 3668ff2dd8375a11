"""The plain PyTorch script `process.py` times as a whole process: read a photo, DLG's LeNet, 15 lines of loop.

    python benchmarks/bare_process.py PHOTO.png STEPS OUT.png

`bare_process_gifd.py` reads its photo, builds its victim and projects onto ℓ1 balls with the functions here
(`speed.py`'s plain GIFD loop with the last).
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def read_photo(path):
    """(1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


def lenet_gradient(inputs, label):
    """DLG's sigmoid LeNet (weights uniform in ±0.5), its parameters, their true gradient on ``inputs`` and its norm."""
    model = nn.Sequential(nn.Conv2d(3, 12, 5, 2, 2), nn.Sigmoid(), nn.Conv2d(12, 12, 5, 2, 2), nn.Sigmoid(),
                          nn.Conv2d(12, 12, 5, 1, 2), nn.Sigmoid(), nn.Flatten(), nn.Linear(768, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    params = list(model.parameters())
    target = [g.detach() for g in torch.autograd.grad(F.cross_entropy(model(inputs), label), params)]
    return model, params, target, torch.sqrt(sum((t * t).sum() for t in target))


def project_l1(v, radius):
    """Each row of ``v`` (N, d) projected onto the ℓ1 ball of radius ``radius`` (N,): the sort-based projection
    research code writes (Duchi et al. 2008), in plain float arithmetic."""
    magnitudes = v.abs()
    u, _ = magnitudes.sort(dim=1, descending=True)
    css = u.cumsum(dim=1) - radius[:, None]
    j = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    rho = (u * j > css).sum(dim=1, keepdim=True).clamp_min(1)
    theta = css.gather(1, rho - 1) / rho
    inside = magnitudes.sum(dim=1, keepdim=True) <= radius[:, None]
    return torch.where(inside, v, v.sign() * (magnitudes - theta).clamp_min(0))


if __name__ == "__main__":
    photo, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    x_true = read_photo(photo)
    label = torch.tensor([0])
    model, params, target, tnorm = lenet_gradient(x_true, label)
    x = torch.randn_like(x_true).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        grads = torch.autograd.grad(F.cross_entropy(model(x), label), params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
        gnorm = torch.sqrt(sum((g * g).sum() for g in grads))
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
        (1 - dot / (gnorm * tnorm) + 1e-4 * tv).backward(inputs=[x])
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    image = (x.detach()[0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    Image.fromarray(image).save(out)
