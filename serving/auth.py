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

Without tokens the API trusts whoever reaches it, so it listens on loopback only (unless
``driftline serve --insecure``), and refuses a request whose ``Host`` another site's page
may have sent (:func:`rebindable_authority`): a page whose name an attacker re-points at
127.0.0.1 (DNS rebinding) sends its own name, a public one. Loopback names, IP addresses
and names of one label (a compose service's, ``api``) are not such names.

>>> [is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost",
...                           "::ffff:127.0.0.1", "0.0.0.0", "::", "", "10.0.0.5", "example.com")]
[True, True, True, True, True, True, False, False, False, False, False]
>>> [rebindable_authority(h) for h in ("localhost:8080", "127.0.0.1", "[::1]:80", "api:8080",
...     "10.0.0.5:8080", "app.localhost", "evil.example:8080", "127.0.0.1.evil.example", "")]
[False, False, False, False, False, False, True, True, True]
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without a port) is this machine's loopback:
    ``localhost`` (and its subdomains, RFC 6761), 127.0.0.0/8, ``::1``. The empty host and
    the wildcard addresses are every interface, not loopback."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@functools.lru_cache(maxsize=256)
def rebindable_authority(authority: str) -> bool:
    """Whether a ``Host`` header (``name[:port]``, ``[v6][:port]``) may come from another
    site's page re-pointed here: a name of several labels, not ``localhost``'s; or none."""
    if authority.startswith("["):
        return not authority[1:].partition("]")[0]  # an IPv6 address
    name = authority.rpartition(":")[0] if authority.count(":") == 1 else authority
    name = name.lower().rstrip(".")
    if not name:
        return True
    if "." not in name or is_loopback(name):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False
