"""One user seed, independent random streams per purpose (data, model, client, attack, ...).

Adding a restart to the attack therefore never changes the victim or the batch.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

#: ``global`` seeds torch's default generators while an attack runs (`fedinvert.determinism`).
STREAMS = ("data", "model", "client", "defense", "attack", "prior", "global")


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` derived from the user's ``seed`` (stable across runs and platforms)."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(stream.encode())])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(seed: int, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch Generator seeded for ``stream``."""
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, stream))
    return g


def numpy_rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(stream_seed(seed, stream))
