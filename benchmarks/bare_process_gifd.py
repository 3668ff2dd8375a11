"""The plain PyTorch GIFD script `process.py --attack gifd` times as a whole process: read a photo, DLG's LeNet,
the face DCGAN from the gan-face-generate wheel, and a plain loop over its five stages.

    python benchmarks/bare_process_gifd.py PHOTO.png STEPS_PER_STAGE OUT.png

Stage 0 optimises the latent (renormalised to its start norm after each step); stage k ≥ 1 the input of block
k, its deviation from the stage's start projected onto the ℓ1 ball of 0.1, 0.3, 0.6, 1.0 times the start's ℓ1
norm. Loss: 1 − cosine of the gradients + 1e-4·TV + 1e-6·‖x‖₂/(H·W); Adam, lr 0.3. The last stage's image is
written. One chain, as `process.py` runs fedinvert with ``attack.restarts=1``.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bare_process import lenet_gradient, project_l1, read_photo
from PIL import Image
from torch import nn

photo, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
label = torch.tensor([0])
model, params, target, tnorm = lenet_gradient((read_photo(photo) - 0.5) / 0.5, label)

layers = []
for cin, cout in zip((100, 512, 256, 128), (512, 256, 128, 64), strict=True):
    layers += [nn.ConvTranspose2d(cin, cout, 4, *((1, 0) if cin == 100 else (2, 1)), bias=False),
               nn.BatchNorm2d(cout), nn.ReLU()]
generator = nn.Sequential(*layers, nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False), nn.Tanh())
weights = Path(importlib.util.find_spec("gan_face_generate").submodule_search_locations[0]) / "weights.tar"
state = torch.load(weights, map_location="cpu", weights_only=True)["netG_state_dict"]
generator.load_state_dict({key.removeprefix("main."): value for key, value in state.items()})
generator.eval().requires_grad_(False)


start = torch.randn(1, 100)
for k, r in enumerate((None, 0.1, 0.3, 0.6, 1.0)):
    if k > 0:
        with torch.no_grad():
            start = generator[3 * k - 3 : 3 * k](start.reshape(1, 100, 1, 1) if k == 1 else start)
    x = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.3)
    for _ in range(steps):
        opt.zero_grad()
        images = (generator[3 * k :](x.reshape(1, 100, 1, 1) if k == 0 else x) + 1) / 2
        inputs = (F.avg_pool2d(images, 2) - 0.5) / 0.5
        grads = torch.autograd.grad(F.cross_entropy(model(inputs), label), params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
        gnorm = torch.sqrt(sum((g * g).sum() for g in grads))
        tv = (inputs[..., 1:, :] - inputs[..., :-1, :]).abs().mean() + (inputs[..., :, 1:] - inputs[..., :, :-1]).abs().mean()
        (1 - dot / (gnorm * tnorm) + 1e-4 * tv + 1e-6 * inputs.norm() / 32**2).backward(inputs=[x])
        opt.step()
        with torch.no_grad():
            if k == 0:
                x.mul_(start.norm() / x.norm())
            else:
                x.copy_(start + project_l1((x - start).flatten(1), r * start.abs().sum()[None]).reshape(x.shape))
    start = x.detach()
with torch.no_grad():
    image = (generator[12:](start) + 1) / 2
image = (F.avg_pool2d(image, 2)[0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
Image.fromarray(image).save(out)
