"""Seeds derived from names, so that every random draw of a run is a pure function of where it happens."""

from __future__ import annotations

import hashlib


def seed_for(*parts: object) -> int:
    """A 31-bit seed derived from its parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def round_seed(seed: int, round_: int) -> int:
    """The seed of round `round_` of a multi-round generation seeded `seed` (the Flow's chunk rounds; a one-pass
    answer is round 0)."""
    return seed * 1000 + round_
