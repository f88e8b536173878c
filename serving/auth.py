"""Bearer tokens with roles: ``scorer`` (scores, similar cases, model status) and ``admin``
(all of that, and promotions, rollbacks, retrains, traffic splits, erasure).

The configuration holds only SHA-256 hashes of tokens (``DRIFTLINE_API_TOKENS``, entries
``name:role:sha256hex``), never the tokens. A token is 32 random bytes, so a plain hash is
enough to store it: there is nothing to brute-force, unlike a password, and a fast hash
keeps the check off the latency budget. ``driftline token`` makes a token and its entry.

>>> token, entry = new_token("ops", "admin")
>>> tokens = parse_tokens(entry + ",ci:scorer:" + "0" * 64)
>>> tokens.role_of(token)
'admin'
>>> tokens.role_of("not-a-token") is None
True
>>> allows("admin", "scorer"), allows("scorer", "admin")
(True, False)
>>> parse_tokens("ops:root:abc")
Traceback (most recent call last):
...
ValueError: DRIFTLINE_API_TOKENS entry 1: role 'root' is not one of scorer, admin
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

ROLES = ("scorer", "admin")  # each role may do what the roles before it may


def hash_token(token: str) -> str:
    # surrogateescape: a header's undecodable bytes are an unknown token, not an error.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token(name: str, role: str) -> tuple[str, str]:
    """A fresh token and its configuration entry."""
    token = "dl_" + secrets.token_urlsafe(32)
    return token, f"{name}:{role}:{hash_token(token)}"


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Tokens:
    by_hash: dict[str, tuple[str, str]]  # hash -> (name, role)

    @property
    def enabled(self) -> bool:
        return bool(self.by_hash)

    def identify(self, token: str) -> tuple[str, str] | None:
        """The (name, role) of ``token``, or None."""
        return self.by_hash.get(hash_token(token))

    def role_of(self, token: str) -> str | None:
        found = self.identify(token)
        return found[1] if found else None


def parse_tokens(config: str) -> Tokens:
    """Read ``name:role:sha256hex`` entries, separated by commas or new lines."""
    by_hash: dict[str, tuple[str, str]] = {}
    entries = [e.strip() for e in config.replace("\n", ",").split(",") if e.strip()]
    for i, entry in enumerate(entries, 1):
        parts = entry.split(":")
        where = f"DRIFTLINE_API_TOKENS entry {i}"
        if len(parts) != 3:
            raise ValueError(f"{where}: expected name:role:sha256hex")
        name, role, digest = parts
        if role not in ROLES:
            raise ValueError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ValueError(f"{where}: the hash must be 64 hexadecimal digits (SHA-256)")
        by_hash[digest.lower()] = (name, role)
    return Tokens(by_hash)
