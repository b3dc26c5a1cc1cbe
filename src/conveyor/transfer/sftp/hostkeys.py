"""SSH host keys: fingerprint forms, matching, and asking a server which keys it has.

Accepted ``host_fingerprint`` forms, all over the base64-decoded key blob:

- ``SHA256:<base64>`` as ``ssh-keygen -l`` prints it (padding optional)
- MD5: 32 hex digits, colons optional, ``MD5:`` prefix optional
- SHA512: 128 hex digits (``SHA512:`` prefix optional) — Patchworks' form for non-RSA keys

An OpenSSH server presents one host key per connection, chosen from the client's
host-key algorithm list. To find a key pinned by fingerprint whatever type it is, we read
the server's KEXINIT (sent in clear right after the version line) to learn which key types
it has, then connect once per type, ed25519 first, as ``ssh-keyscan`` does. Asking OpenSSH
for a type it lacks resets the TCP connection, so we never ask for one it did not list.

The parsing half of this module is pure (the config model uses it); asyncssh is only
imported by :func:`scan`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import struct
import sys
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from conveyor.netloc import hostport

FORMS_HELP = (
    "use SHA256:<base64> (as ssh-keygen -l prints it), MD5 as 32 hex digits (colons and an MD5: prefix optional) "
    "or SHA512 as 128 hex digits"
)

HashName = Literal["sha256", "md5", "sha512"]

# Host-key algorithm families, in order of preference. One connection per family finds that key.
KEY_FAMILIES: dict[str, list[str]] = {
    "ssh-ed25519": ["ssh-ed25519"],
    "ecdsa-sha2-nistp256": ["ecdsa-sha2-nistp256"],
    "ecdsa-sha2-nistp384": ["ecdsa-sha2-nistp384"],
    "ecdsa-sha2-nistp521": ["ecdsa-sha2-nistp521"],
    "ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
}


@dataclass(frozen=True)
class Fingerprint:
    """One pinned fingerprint: a hash name and the digest bytes."""

    hash: HashName
    digest: bytes
    text: str
    """The form as the user wrote it (for messages)."""

    def matches(self, blob: bytes) -> bool:
        """Whether this fingerprint is of the public key ``blob`` (the base64-decoded key)."""
        return hashlib.new(self.hash, blob).digest() == self.digest


def parse_fingerprint(text: str) -> Fingerprint:
    """Parse one fingerprint in any accepted form; ValueError naming the forms otherwise."""
    s = text.strip()
    head, sep, rest = s.partition(":")
    prefix = head.upper() if sep else ""
    if prefix == "SHA256":
        b64 = rest.strip().rstrip("=")
        try:
            digest = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 32:
            raise ValueError(f"'{text}' is not a valid SHA256 fingerprint: {FORMS_HELP}")
        return Fingerprint("sha256", digest, s)
    if prefix in ("MD5", "SHA512"):
        s = rest
    hexdigits = s.replace(":", "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]+", hexdigits or "-"):
        raise ValueError(f"'{text}' is not a host key fingerprint: {FORMS_HELP}")
    if len(hexdigits) == 32 and prefix != "SHA512":
        if ":" in s and not re.fullmatch(r"([0-9a-fA-F]{2}:){15}[0-9a-fA-F]{2}", s.strip()):
            raise ValueError(f"'{text}' is not a valid MD5 fingerprint: {FORMS_HELP}")
        return Fingerprint("md5", bytes.fromhex(hexdigits), text.strip())
    if len(hexdigits) == 128 and prefix != "MD5":
        return Fingerprint("sha512", bytes.fromhex(hexdigits), text.strip())
    raise ValueError(f"'{text}' has {len(hexdigits)} hex digits, which fits no fingerprint form: {FORMS_HELP}")


def sha256_fp(blob: bytes) -> str:
    """``SHA256:<base64>`` without padding, as ``ssh-keygen -l`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def md5_fp(blob: bytes) -> str:
    """MD5 as colon-separated hex (``MD5:`` prefixed), as ``ssh-keygen -E md5 -l`` prints it."""
    h = hashlib.md5(blob).hexdigest()
    return "MD5:" + ":".join(h[i : i + 2] for i in range(0, 32, 2))


def sha512_fp(blob: bytes) -> str:
    """SHA512 as 128 hex digits (Patchworks' form)."""
    return hashlib.sha512(blob).hexdigest()


def describe_key(keytype: str, blob: bytes) -> str:
    """One line naming a key in every form, for error messages."""
    return f"{keytype} {sha256_fp(blob)} {md5_fp(blob)} SHA512 {sha512_fp(blob)}"


def family_of(alg: str) -> str | None:
    """The key family (``ssh-rsa``, ``ssh-ed25519``, ...) a host-key algorithm belongs to."""
    for fam, algs in KEY_FAMILIES.items():
        if alg in algs:
            return fam
    return None


# --------------------------------------------------------------------------- KEXINIT probe
async def server_key_families(host: str, port: int, timeout: float) -> list[str]:  # noqa: ASYNC109
    """The host-key families the server lists in its KEXINIT, in our order of preference."""
    _, offered = await server_kexinit(host, port, timeout)
    return families_in(offered)


def families_in(host_key_algs: list[str]) -> list[str]:
    """The host-key families among a KEXINIT's host-key algorithms, in our order of preference."""
    return [fam for fam, algs in KEY_FAMILIES.items() if any(a in host_key_algs for a in algs)]


Stream = tuple[Any, Any]
"""A (reader, writer) pair: asyncio's streams, or asyncssh's for a channel through a jump host."""
Opener = Callable[[str, int, float], Awaitable[Stream]]
"""Opens a stream to ``host, port`` within a number of seconds (directly, or through a proxy or jump host)."""


async def _direct(host: str, port: int, seconds: float) -> Stream:
    return await asyncio.open_connection(host, port)


async def server_kexinit(host: str, port: int, timeout: float, opener: Opener = _direct) -> tuple[list[str], list[str]]:  # noqa: ASYNC109
    """The key exchange and host-key algorithms the server lists in its KEXINIT."""
    lists = await server_algorithms(host, port, timeout, opener)
    return lists["kex"], lists["host_keys"]


KEXINIT_LISTS = ("kex", "host_keys", "ciphers", "ciphers_s2c", "macs", "macs_s2c", "compression", "compression_s2c")
"""The name-lists of a KEXINIT in order (RFC 4253 7.1); the unsuffixed ones are client to server."""


async def server_algorithms(host: str, port: int, timeout: float, opener: Opener = _direct) -> dict[str, list[str]]:  # noqa: ASYNC109
    """Every algorithm list the server sends in its KEXINIT, by the names of KEXINIT_LISTS.

    Reads the server's first binary packet (sent unencrypted before any key exchange)
    over a plain TCP connection that is closed straight after; no key is negotiated.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await opener(host, port, timeout)
        try:
            writer.write(b"SSH-2.0-conveyor_probe\r\n")
            while True:  # servers may send lines before the version line (RFC 4253 4.2)
                line = await reader.readuntil(b"\n")
                if line.startswith(b"SSH-"):
                    break
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            if not 5 < length < 65536:
                raise ValueError("not an SSH server (bad packet length)")
            packet = await reader.readexactly(length)
        finally:
            writer.close()
    payload = packet[1 : length - packet[0]]  # padding_length byte, payload, random padding
    if not payload or payload[0] != 20:  # SSH_MSG_KEXINIT
        raise ValueError("not an SSH server (no KEXINIT)")
    pos = 17  # message byte + 16-byte cookie
    lists = {}
    for name in KEXINIT_LISTS:
        (n,) = struct.unpack(">I", payload[pos : pos + 4])
        lists[name] = payload[pos + 4 : pos + 4 + n].decode("ascii", "replace").split(",")
        pos += 4 + n
    return lists


def sha1_signature(keytype: str, host_key_algs: list[str]) -> bool:
    """Whether the server signs with SHA-1 when it proves its ``keytype`` key: a DSA key always,
    an RSA key when the server lists no rsa-sha2 algorithm (conveyor prefers those when it does)."""
    if keytype == "ssh-dss":
        return True
    return keytype == "ssh-rsa" and not any(a in host_key_algs for a in ("rsa-sha2-512", "rsa-sha2-256"))


@dataclass(frozen=True)
class HostKeyInfo:
    """One host key a server offers, in every fingerprint form."""

    keytype: str
    sha256: str
    md5: str
    sha512: str


async def scan(host: str, port: int = 22, timeout: float = 10.0) -> list[tuple[str, str, str, str]]:  # noqa: ASYNC109
    """Every host key the server offers as ``(keytype, sha256, md5, sha512)``, ed25519 first."""
    return await _keys(host, port, timeout, await server_key_families(host, port, timeout))


async def _keys(host: str, port: int, timeout: float, families: list[str]) -> list[tuple[str, str, str, str]]:  # noqa: ASYNC109
    import asyncssh

    from conveyor.transfer.sftp.algorithms import supported

    out: list[tuple[str, str, str, str]] = []
    for fam in families:
        try:
            async with asyncio.timeout(timeout):
                # Every algorithm asyncssh has: this handshake only reads a public key, and an
                # old server's key is as worth pinning as a new one's.
                key = await asyncssh.get_server_host_key(
                    host,
                    port,
                    server_host_key_algs=KEY_FAMILIES[fam],
                    config=None,
                    kex_algs=[k for k in supported("kex") if not k.startswith("gss-")],
                    options=asyncssh.SSHClientConnectionOptions(
                        config=None, encryption_algs=supported("ciphers"), mac_algs=supported("macs")
                    ),
                )
        except (ConnectionResetError, asyncssh.DisconnectError):
            continue  # the server lacks that type after all (OpenSSH resets the connection)
        if key is None:
            continue
        blob = key.public_data
        out.append((key.get_algorithm(), sha256_fp(blob), md5_fp(blob), sha512_fp(blob)))
    return out


async def _offer_and_keys(
    host: str,
    port: int,
    timeout: float,  # noqa: ASYNC109
) -> tuple[dict[str, list[str]], list[tuple[str, str, str, str]]]:
    offer = await server_algorithms(host, port, timeout)
    return offer, await _keys(host, port, timeout, families_in(offer["host_keys"]))


def _split_target(target: str) -> tuple[str, int]:
    if target.startswith("["):  # [::1]:2222
        host, _, rest = target[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 22
    if target.count(":") == 1:
        host, _, port = target.partition(":")
        return host, int(port)
    return target, 22


def fingerprint_main(argv_target: str) -> int:
    """``conveyor fingerprint HOST[:PORT]``: print every host key in all three forms, ready to paste."""
    try:
        host, port = _split_target(argv_target)
    except ValueError:
        print(f"conveyor fingerprint: '{argv_target}' is not HOST[:PORT]", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            # An old server's finite-field Diffie-Hellman makes cryptography warn that it will drop
            # FFDH one day: noise on a command whose output is meant to be pasted.
            warnings.filterwarnings("ignore", "Diffie-Hellman over finite fields")
            offer, keys = asyncio.run(_offer_and_keys(host, port, 10.0))
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
        print(
            f"conveyor fingerprint: cannot read host keys from {hostport(host, port)}: {e or type(e).__name__}",
            file=sys.stderr,
        )
        return 1
    if not keys:
        print(f"conveyor fingerprint: {hostport(host, port)} offered no host key conveyor can check", file=sys.stderr)
        return 1
    print(f"# host keys of {hostport(host, port)}; put one (or a list, for rotation) under host_fingerprint:")
    for keytype, sha256, md5, sha512 in keys:
        print(f"\n# {keytype}")
        print(f'host_fingerprint: "{sha256}"')
        print(f'host_fingerprint: "{md5}"')
        print(f'host_fingerprint: "{sha512}"')
    print(f"\n# algorithms {hostport(host, port)} offers (for algorithms: / legacy_algorithms:)")
    for name in ("kex", "host_keys", "ciphers", "macs"):
        print(f"#   {name}: {', '.join(offer[name])}")
    return 0
