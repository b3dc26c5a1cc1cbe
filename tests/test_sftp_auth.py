"""SFTP logins that need more than one credential or answer PAM's prompts, on real OpenSSH sshd:
``AuthenticationMethods publickey,password`` (key and password together) and keyboard-interactive
passwords through PAM."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import AuthError
from tests.backends.sftp import ssh_client_keys  # noqa: F401  (the fixture)
from tests.servers.ssh_keys import KeySet
from tests.servers.sshd import Sshd, check_sftp, sshd_available, start_sshd


def _server(keys: KeySet, *extra: str) -> Iterator[Sshd]:
    why = sshd_available()
    if why:
        pytest.skip(why)
    srv = start_sshd(keys, extra=extra)
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(srv.base, ignore_errors=True)


@pytest.fixture(scope="module")
def two_factor(ssh_client_keys: KeySet) -> Iterator[Sshd]:  # noqa: F811
    """sshd that wants a key and then a password."""
    yield from _server(ssh_client_keys, "AuthenticationMethods publickey,password")


@pytest.fixture(scope="module")
def pam(ssh_client_keys: KeySet) -> Iterator[Sshd]:  # noqa: F811
    """sshd that takes passwords only as keyboard-interactive prompts from PAM."""
    if not Path("/etc/pam.d/sshd").exists():
        pytest.skip("/etc/pam.d/sshd missing (openssh-server's PAM config)")
    yield from _server(
        ssh_client_keys,
        "UsePAM yes",
        "KbdInteractiveAuthentication yes",
        "PasswordAuthentication no",
        "PubkeyAuthentication no",
    )


async def check(srv: Sshd, **over: Any) -> str:
    return await check_sftp(srv.instance_config(**over))


async def refused(srv: Sshd, **over: Any) -> str:
    with pytest.raises(AuthError) as ei:
        await check(srv, **over)
    msg = str(ei.value)
    assert "instance 'partner'" in msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------- key and password
async def test_key_and_password_together(two_factor: Sshd, ssh_client_keys: KeySet) -> None:  # noqa: F811
    key = str(ssh_client_keys.keys["ed25519"])
    assert "ssh-ed25519" in await check(two_factor, private_key_file=key)


async def test_key_alone_asks_for_the_password(two_factor: Sshd, ssh_client_keys: KeySet) -> None:  # noqa: F811
    msg = await refused(two_factor, password=None, private_key_file=str(ssh_client_keys.keys["ed25519"]))
    assert "accepted the private key but also asks for a password" in msg


async def test_password_alone_asks_for_a_key(two_factor: Sshd) -> None:
    msg = await refused(two_factor)
    assert "wants a private key before it takes the password" in msg


async def test_key_and_wrong_password(two_factor: Sshd, ssh_client_keys: KeySet) -> None:  # noqa: F811
    key = str(ssh_client_keys.keys["ed25519"])
    msg = await refused(two_factor, private_key_file=key, password="nope")
    assert "wrong username or password" in msg and "nope" not in msg


async def test_password_and_refused_key(two_factor: Sshd, ssh_client_keys: KeySet) -> None:  # noqa: F811
    msg = await refused(two_factor, private_key_file=str(ssh_client_keys.keys["stranger"]))
    assert "did not accept the private key (ssh-ed25519 SHA256:" in msg


# --------------------------------------------------------------------------- keyboard-interactive
async def test_keyboard_interactive_password(pam: Sshd) -> None:
    assert "ssh-ed25519" in await check(pam)


async def test_keyboard_interactive_wrong_password(pam: Sshd) -> None:
    msg = await refused(pam, password="nope")
    assert "wrong username or password" in msg and "nope" not in msg
