"""``host:port`` in messages, descriptions and URLs."""

from __future__ import annotations


def hostport(host: str, port: int | str) -> str:
    """``host:port``, an IPv6 address in brackets as URLs and OpenSSH write it (``[::1]:2222``):
    ``::1:2222`` would read as an address with no port."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
