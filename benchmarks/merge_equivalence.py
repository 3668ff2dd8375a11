"""fedinvert's configuration merge (deepmerge) against OmegaConf's, which it replaced, on random layerings.

Draws ``--cases`` random plain configurations (nested mappings of scalars, lists and mappings, keys from a small
set so layers collide) and one to four layers over each, merges them with `fedinvert.config.schema._merge` and
with ``OmegaConf.merge`` (then ``to_container``), and counts the cases where both give a result and the results
differ, and the cases where OmegaConf raises (a list over a mapping or the reverse; fedinvert lets the later
layer stand, and the configuration checks then name the key). OmegaConf is no fedinvert dependency: run this
where it is installed (``pip install omegaconf``).

    python benchmarks/merge_equivalence.py --cases 20000
"""

from __future__ import annotations

import argparse
import copy
import random
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedinvert.config.schema import _merge

KEYS = ("a", "b", "c", "name")
SCALARS: tuple[Any, ...] = (None, 1, 2.5, True, "x", "", [1, 2], [], [{"a": 1}], "y", 0, -1e-4, [None])


def omegaconf_merge(base: dict[str, Any], layers: list[dict[str, Any]]) -> Any:
    """OmegaConf's merge as fedinvert called it before, or None where it raises."""
    try:
        merged = OmegaConf.merge(OmegaConf.create(base), *(OmegaConf.create(layer) for layer in layers))
        return OmegaConf.to_container(merged, resolve=True)
    except (OmegaConfBaseException, TypeError):  # TypeError: "Cannot merge incompatible container types"
        return None


def value(rng: random.Random, depth: int) -> Any:
    if depth < 3 and rng.random() < 0.4:
        return {rng.choice(KEYS): value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return copy.deepcopy(rng.choice(SCALARS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    differ = raised = 0
    for _ in range(args.cases):
        base = {key: value(rng, 1) for key in KEYS[: rng.randint(1, 4)]}
        layers = [{rng.choice(KEYS): value(rng, 1)} for _ in range(rng.randint(1, 4))]
        theirs = omegaconf_merge(copy.deepcopy(base), copy.deepcopy(layers))
        ours = _merge(base, layers)
        if theirs is None:
            raised += 1
        elif repr(ours) != repr(theirs):
            differ += 1
            if differ <= 5:
                print(f"differ: {base} + {layers}\n  OmegaConf {theirs}\n  fedinvert {ours}")
    print(f"{args.cases} layerings: {differ} differ where OmegaConf gives a result; OmegaConf raises on {raised}")


if __name__ == "__main__":
    main()
