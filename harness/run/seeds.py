"""Seeds derived from names, so that every random draw of a run is a pure function of where it happens."""

from __future__ import annotations

import hashlib


def seed_for(*parts: object) -> int:
    """A 31-bit seed derived from its parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF

