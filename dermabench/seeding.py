"""Seeds derived from the run seed, so every random draw is reproducible on its own.

A derived seed depends only on the run seed and a salt (e.g. "prompt", 17), never
on how many draws came before, so generating image 17 alone or in a batch of 64,
in one process or in eight, gives the same image.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *salt: int | str) -> int:
    """A 31-bit seed from the run seed and a salt (fits torch, numpy and random)."""
    text = ":".join([str(int(seed)), *map(str, salt)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFF_FFFF
