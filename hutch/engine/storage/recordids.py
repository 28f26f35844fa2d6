"""The ids of the engine's records (``sb-…``, ``ap-…``, ``ex-…``), as Modal's look."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """Ids like Modal's: a kind prefix and 22 random base-62 characters."""
    # One draw from the OS, not one per character: ids are made on every exec.  192 random
    # bits for ~131 bits of id: every id is equally likely to within 2**-60.
    value = int.from_bytes(secrets.token_bytes(24), "big")
    chars = []
    for _ in range(22):
        value, digit = divmod(value, 62)
        chars.append(_ALPHABET[digit])
    return prefix + "-" + "".join(chars)
