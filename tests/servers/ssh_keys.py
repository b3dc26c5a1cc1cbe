"""Client and host key material for the SFTP test servers, made with ssh-keygen.

One set per test session: client keys in every format the sftp connector accepts (RSA PEM,
OpenSSH ed25519/ecdsa/rsa, each with and without passphrase), a key no server accepts,
and host keys (ed25519 + rsa) for a server.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

PASSPHRASE = "correct horse battery"

# name -> ssh-keygen arguments; "-pass" variants are encrypted with PASSPHRASE.
CLIENT_KEYS: dict[str, list[str]] = {
    "rsa-pem": ["-t", "rsa", "-b", "2048", "-m", "PEM"],
    "rsa-pem-pass": ["-t", "rsa", "-b", "2048", "-m", "PEM"],
    "ed25519": ["-t", "ed25519"],
    "ed25519-pass": ["-t", "ed25519"],
    "ecdsa": ["-t", "ecdsa", "-b", "256"],
    "ecdsa-pass": ["-t", "ecdsa", "-b", "256"],
    "rsa": ["-t", "rsa", "-b", "2048"],
    "rsa-pass": ["-t", "rsa", "-b", "2048"],
    "stranger": ["-t", "ed25519"],
}


def keygen(path: Path, args: list[str], passphrase: str = "") -> Path:
    """Run ssh-keygen quietly; returns the private key path (the .pub is beside it)."""
    path.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
    Path(str(path) + ".pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", *args, "-N", passphrase, "-C", path.name, "-f", str(path)], check=True, capture_output=True
    )
    return path


@dataclass
class KeySet:
    """Client keys by name, and the authorized_keys text accepting all but 'stranger'."""

    dir: Path
    keys: dict[str, Path]

    def passphrase(self, name: str) -> str | None:
        """The passphrase of a key, or None when it is not encrypted."""
        return PASSPHRASE if name.endswith("-pass") else None

    def authorized_keys(self) -> str:
        """authorized_keys lines for every key except 'stranger'."""
        return "".join(Path(str(p) + ".pub").read_text() for n, p in self.keys.items() if n != "stranger")


def make_client_keys(directory: Path) -> KeySet:
    """Generate every client key into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = {}
    for name, args in CLIENT_KEYS.items():
        keys[name] = keygen(directory / f"id_{name}", args, PASSPHRASE if name.endswith("-pass") else "")
    return KeySet(directory, keys)


def make_host_keys(directory: Path, types: tuple[str, ...] = ("ed25519", "rsa")) -> dict[str, Path]:
    """Host keys for a server: type -> private key path."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for t in types:
        args = ["-t", t] + (["-b", "2048"] if t == "rsa" else [])
        out[t] = keygen(directory / f"ssh_host_{t}_key", args)
    return out
