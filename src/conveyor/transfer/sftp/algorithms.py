"""SSH algorithm choices of an sftp instance: the names asyncssh supports, the legacy additions,
the connect options they make, and the explanation of a failed negotiation."""

from __future__ import annotations

import re
from typing import Any

CATEGORIES: dict[str, tuple[str, str]] = {
    # config key: (asyncssh connect option, what a negotiation error calls it)
    "kex": ("kex_algs", "key exchange"),
    "host_keys": ("server_host_key_algs", "host key"),
    "ciphers": ("encryption_algs", "cipher"),
    "macs": ("mac_algs", "MAC"),
    "compression": ("compression_algs", "compression"),
}

LEGACY: dict[str, list[str]] = {
    "kex": ["diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1", "diffie-hellman-group1-sha1"],
    "ciphers": ["aes128-cbc", "aes256-cbc", "3des-cbc"],
}
"""What ``legacy_algorithms: true`` adds, last, to the defaults: what servers from before 2015 need.
``ssh-rsa`` (SHA-1) host-key signatures need no addition: asyncssh accepts them after rsa-sha2-*,
and the host-key check warns when a server signs with nothing better."""

# AES-GCM first: cryptography runs it with AES-NI in one call per packet, while asyncssh's
# chacha20-poly1305 (its default first choice) costs several calls per packet.
ENCRYPTION_ALGS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]


def supported(category: str) -> list[str]:
    """Every name asyncssh accepts for one ``algorithms`` key, in its order of preference."""
    from asyncssh import compression, encryption, kex, mac, public_key

    algs = {
        "kex": kex.get_kex_algs,
        "host_keys": lambda: public_key.get_public_key_algs() + public_key.get_certificate_algs(),
        "ciphers": encryption.get_encryption_algs,
        "macs": mac.get_mac_algs,
        "compression": compression.get_compression_algs,
    }[category]()
    return [a.decode("ascii") for a in algs]


def defaults(category: str) -> list[str]:
    """asyncssh's default list for one key (conveyor's own order for ciphers)."""
    if category == "ciphers":
        return list(ENCRYPTION_ALGS)
    from asyncssh import compression, kex, mac, public_key

    algs = {
        "kex": kex.get_default_kex_algs,
        "host_keys": public_key.get_default_public_key_algs,
        "macs": mac.get_default_mac_algs,
        "compression": compression.get_default_compression_algs,
    }[category]()
    return [a.decode("ascii") for a in algs]


def check_names(category: str, names: list[str]) -> list[str]:
    """``names`` when asyncssh supports each; else ValueError naming the unknown ones and the valid ones."""
    valid = supported(category)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown {CATEGORIES[category][1]} algorithm {', '.join(unknown)}; valid: {', '.join(valid)}")
    if not names:
        raise ValueError("an empty list: leave the key out for the defaults")
    return names


def chosen(algorithms: dict[str, list[str] | None], legacy: bool) -> dict[str, list[str]]:
    """The list offered per key: the configured one, else the default plus, with ``legacy``, LEGACY.
    ``host_keys`` only when configured: asyncssh's own choice also follows a known_hosts file."""
    out = {}
    for category in CATEGORIES:
        names = algorithms.get(category)
        if names is None and category == "host_keys":
            continue
        if names is None:
            names = defaults(category) + [a for a in LEGACY.get(category, []) if legacy]
            names = list(dict.fromkeys(names))
        out[category] = names
    return out


def connect_options(lists: dict[str, list[str]]) -> dict[str, Any]:
    """asyncssh ``connect`` keyword arguments for the lists of :func:`chosen`."""
    return {CATEGORIES[c][0]: names for c, names in lists.items()}


_NO_MATCH = re.compile(
    r"No matching (key exchange|encryption|MAC|compression) algorithm found, sent \S* and received (\S*)"
)
_ASYNCSSH_NAMES = {"key exchange": "kex", "encryption": "ciphers", "MAC": "macs", "compression": "compression"}


def explain(reason: str, legacy: bool, server_host_keys: list[str] | None = None) -> str | None:
    """A failed negotiation in a user's words: what the server offers and which setting would help.

    ``reason`` is asyncssh's message; ``server_host_keys`` the host-key algorithms the server listed
    (read from its KEXINIT), for a failure on those. None when ``reason`` is not a negotiation failure.
    """
    m = _NO_MATCH.search(reason)
    if m:
        category = _ASYNCSSH_NAMES[m.group(1)]
        offered = m.group(2).split(",")
    elif server_host_keys is not None and "host key" in reason.lower():
        category, offered = "host_keys", server_host_keys
    else:
        return None
    # Markers in the key exchange list (strict KEX, extension negotiation) are not algorithms.
    offered = [a for a in offered if a and a != "<None>" and not a.startswith(("kex-strict-", "ext-info-"))]
    what = CATEGORIES[category][1]
    text = f"no common {what}: the server offers {', '.join(offered) or 'none'}"
    ours = set(supported(category))
    if not legacy and any(a in LEGACY.get(category, []) for a in offered):
        return f"{text}; set legacy_algorithms: true or algorithms.{category}"
    usable = [a for a in offered if a in ours]
    if usable:
        return f"{text}; set algorithms.{category} to include one of {', '.join(usable)}"
    return f"{text}; conveyor supports none of them"


WEAK: dict[str, set[str]] = {
    "kex": {
        "diffie-hellman-group14-sha1",
        "diffie-hellman-group-exchange-sha1",
        "diffie-hellman-group1-sha1",
        "gss-group1-sha1",
        "gss-group14-sha1",
        "gss-gex-sha1",
        "rsa1024-sha1",
    },
    "host_keys": {"ssh-rsa", "ssh-dss"},
    "ciphers": {
        "aes128-cbc",
        "aes192-cbc",
        "aes256-cbc",
        "3des-cbc",
        "blowfish-cbc",
        "cast128-cbc",
        "seed-cbc@ssh.com",
        "arcfour",
        "arcfour128",
        "arcfour256",
    },
    "macs": {"hmac-md5", "hmac-md5-96", "hmac-md5-etm@openssh.com", "hmac-md5-96-etm@openssh.com"},
}
"""Names an explicit ``algorithms`` list may hold that break what SSH protects (reported as weak)."""
