"""SFTP through a proxy and through jump hosts, on real servers on loopback: OpenSSH sshd as the
server and as the jump host, microsocks (SOCKS5) and tinyproxy (HTTP CONNECT) as proxies.

Each test shows the route was taken (the proxy's log names every tunnel's destination, the jump
host's sshd logs every login), that a wrong host key at any hop is refused before logging in
there and names the hop, and that nothing ever falls back to a direct connection.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.config.loader import load_config
from conveyor.errors import ConfigError, HostKeyError, Transient
from conveyor.transfer.sftp.config import SftpConfig
from conveyor.transfer.sftp.hostkeys import sha256_fp
from tests.harness import bodies, running, wait_for, write_config
from tests.servers.proxies import proxy_factory
from tests.servers.ssh_keys import KeySet
from tests.servers.sshd import Sshd, check_sftp, jump_sshd, own_sshd, sshd
from tests.test_check_connect import check

__all__ = ["jump_sshd", "proxy_factory", "sshd"]

WRONG = "SHA256:" + "A" * 43


@pytest.fixture
def no_forwarding(ssh_client_keys: KeySet) -> Iterator[Sshd]:
    """A jump host that refuses to forward (``AllowTcpForwarding no``)."""
    yield from own_sshd(ssh_client_keys, ("ed25519",), ("AllowTcpForwarding no",))


def folder(server: Sshd) -> Path:
    """A fresh folder on the server, owned by its user."""
    d = server.root / os.urandom(4).hex()
    d.mkdir(mode=0o755)
    server.chown(d)
    return d


# -- proxies --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["socks5", "http"])
async def test_a_flow_reaches_sftp_through_the_proxy(sshd: Sshd, proxy_factory: Any, tmp_path: Path, kind: str) -> None:
    proxy = proxy_factory(kind)
    d = folder(sshd)
    files = {f"in/f{i}.bin": os.urandom(200_000 + i) for i in range(5)}
    for name, data in files.items():
        sshd.put(str(d.relative_to(sshd.root) / name), data)
    out = tmp_path / "out"
    inst = sshd.instance_config(root=str(d), proxy=proxy.url())
    flow = {
        "source": {"instance": "partner", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete"},
        "target": {"type": "directory", "path": str(out)},
    }
    async with running(write_config(tmp_path, {"partner": inst}, {"pull": flow})):
        await wait_for(lambda: len(bodies(out)) == 5, 60)
    got = {hashlib.sha256(v).hexdigest() for v in bodies(out).values()}
    assert got == {hashlib.sha256(v).hexdigest() for v in files.values()}
    ports = proxy.destinations()
    assert ports and set(ports) == {sshd.port}, ports  # every SSH connection was a tunnel of the proxy


@pytest.mark.parametrize("kind", ["socks5", "http"])
async def test_sftp_with_the_proxy_stopped_fails_naming_it_and_never_goes_direct(
    sshd: Sshd, proxy_factory: Any, kind: str
) -> None:
    proxy = proxy_factory(kind)
    proxy.stop()
    before = sshd.logins()
    with pytest.raises(Transient) as e:
        await check_sftp(sshd.instance_config(proxy=proxy.url()))
    assert f"proxy {proxy.shown}: cannot connect" in e.value.message
    assert proxy.password not in str(e.value)
    assert sshd.logins() == before


async def test_sftp_with_wrong_proxy_credentials_is_refused_by_the_proxy(sshd: Sshd, proxy_factory: Any) -> None:
    proxy = proxy_factory("socks5")
    with pytest.raises(Transient) as e:
        await check_sftp(sshd.instance_config(proxy=proxy.url("wrong")))
    assert f"proxy {proxy.shown}: refused the connection to 127.0.0.1:{sshd.port}" in e.value.message
    assert proxy.tunnels() == 0


# -- jump hosts -----------------------------------------------------------------------------
async def test_a_flow_reaches_sftp_through_a_jump_host(sshd: Sshd, jump_sshd: Sshd, tmp_path: Path) -> None:
    d = folder(sshd)
    files = {f"in/f{i}.bin": os.urandom(100_000 + i) for i in range(8)}
    for name, data in files.items():
        sshd.put(str(d.relative_to(sshd.root) / name), data)
    out = tmp_path / "out"
    jumped, served = jump_sshd.logins(), sshd.logins()
    inst = sshd.instance_config(root=str(d), jump=[jump_sshd.hop_config()], max_connections=2)
    flow = {
        "source": {"instance": "partner", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete"},
        "target": {"type": "directory", "path": str(out)},
    }
    async with running(write_config(tmp_path, {"partner": inst}, {"pull": flow})):
        await wait_for(lambda: len(bodies(out)) == 8, 60)
    assert {hashlib.sha256(v).hexdigest() for v in bodies(out).values()} == {
        hashlib.sha256(v).hexdigest() for v in files.values()
    }
    # One jump login per SSH connection to the server; the pool kept them (at most 2 sessions,
    # plus the daemon's start-up check).
    new_jumps, new_logins = jump_sshd.logins() - jumped, sshd.logins() - served
    assert 1 <= new_jumps == new_logins <= 3, (new_jumps, new_logins)


async def test_two_jump_hosts_in_a_row(sshd: Sshd, jump_sshd: Sshd) -> None:
    jumped = jump_sshd.logins()
    line = await check_sftp(sshd.instance_config(jump=[jump_sshd.hop_config(), sshd.hop_config()]))
    assert line.startswith(f"conveyor-test@127.0.0.1:{sshd.port} (ssh-ed25519")
    assert jump_sshd.logins() == jumped + 1


async def test_a_wrong_host_key_at_the_jump_host_is_refused_before_logging_in(sshd: Sshd, jump_sshd: Sshd) -> None:
    jumped, served = jump_sshd.logins(), sshd.logins()
    with pytest.raises(HostKeyError) as e:
        await check_sftp(sshd.instance_config(jump=[jump_sshd.hop_config(host_fingerprint=WRONG)]))
    msg = e.value.message
    assert f"host key of jump host 1 127.0.0.1:{jump_sshd.port} matches no configured host_fingerprint" in msg
    assert sha256_fp(jump_sshd.host_blob("ed25519")) in msg  # what it offered, to compare with the partner
    assert (jump_sshd.logins(), sshd.logins()) == (jumped, served)


async def test_a_wrong_host_key_behind_the_jump_host_is_refused_naming_the_server(sshd: Sshd, jump_sshd: Sshd) -> None:
    jumped, served = jump_sshd.logins(), sshd.logins()
    with pytest.raises(HostKeyError) as e:
        await check_sftp(sshd.instance_config(host_fingerprint=WRONG, jump=[jump_sshd.hop_config()]))
    msg = e.value.message
    assert msg.startswith(f"host key of 127.0.0.1:{sshd.port} matches no configured host_fingerprint"), msg
    assert "jump host" not in msg
    assert jump_sshd.logins() > jumped and sshd.logins() == served


async def test_a_jump_host_login_refused_names_the_hop(sshd: Sshd, jump_sshd: Sshd) -> None:
    with pytest.raises(Exception) as e:
        await check_sftp(sshd.instance_config(jump=[jump_sshd.hop_config(password="wrong")]))
    assert f"jump host 1 127.0.0.1:{jump_sshd.port}: login refused for user 'conveyor-test'" in str(e.value)
    assert "wrong" not in str(e.value).replace("wrong username or password", "")


async def test_a_jump_host_that_will_not_forward_says_so(sshd: Sshd, no_forwarding: Sshd) -> None:
    with pytest.raises(Transient) as e:
        await check_sftp(sshd.instance_config(jump=[no_forwarding.hop_config()]))
    assert f"jump host 1 127.0.0.1:{no_forwarding.port} could not open a connection to 127.0.0.1:{sshd.port}" in (
        e.value.message
    )


async def test_the_proxy_takes_the_first_hop(sshd: Sshd, jump_sshd: Sshd, proxy_factory: Any) -> None:
    proxy = proxy_factory("socks5")
    await check_sftp(sshd.instance_config(proxy=proxy.url(), jump=[jump_sshd.hop_config()]))
    assert set(proxy.destinations()) == {jump_sshd.port}


# -- check --connect, one line per hop --------------------------------------------------------
async def test_check_connect_prints_every_hop(sshd: Sshd, jump_sshd: Sshd, proxy_factory: Any, tmp_path: Path) -> None:
    proxy = proxy_factory("socks5")
    inst = sshd.instance_config(proxy=proxy.url(), jump=[jump_sshd.hop_config()])
    rc, lines = await check(write_config(tmp_path, {"partner": inst}, {}))
    assert rc == 0, lines
    text = "\n".join(lines)
    jump_fp, server_fp = sha256_fp(jump_sshd.host_blob("ed25519")), sha256_fp(sshd.host_blob("ed25519"))
    assert f"1. proxy {proxy.shown}: reached 127.0.0.1:{jump_sshd.port} through it" in text
    assert (
        f"2. jump host 1 conveyor-test@127.0.0.1:{jump_sshd.port}: host key ssh-ed25519 {jump_fp} "
        "(host_fingerprint); logged in" in text
    )
    assert f"3. conveyor-test@127.0.0.1:{sshd.port}: host key ssh-ed25519 {server_fp} (host_fingerprint)" in text
    assert proxy.password not in text

    inst["host_fingerprint"] = WRONG  # the last hop fails: the ones before it still show
    rc, lines = await check(write_config(tmp_path, {"partner": inst}, {}))
    text = "\n".join(lines)
    assert rc == 2, lines
    assert re.search(r"FAIL  partner \(sftp\): .*host key of 127\.0\.0\.1:\d+ matches no", text), text
    assert "2. jump host 1" in text and "; logged in" in text
    assert f"3. conveyor-test@127.0.0.1:{sshd.port}: FAILED (above)" in text


async def test_check_connect_says_which_side_of_the_proxy_failed(
    sshd: Sshd, proxy_factory: Any, tmp_path: Path
) -> None:
    proxy = proxy_factory("socks5")
    inst = sshd.instance_config(proxy=proxy.url(), host_fingerprint=WRONG)
    rc, lines = await check(write_config(tmp_path, {"partner": inst}, {}))
    text = "\n".join(lines)
    assert rc == 2, lines
    assert f"1. proxy {proxy.shown}: reached 127.0.0.1:{sshd.port} through it" in text  # the server said no
    assert f"2. conveyor-test@127.0.0.1:{sshd.port}: FAILED (above)" in text

    proxy.stop()  # now the proxy itself: nothing was reached through it
    rc, lines = await check(write_config(tmp_path, {"partner": inst}, {}))
    text = "\n".join(lines)
    assert rc == 2, lines
    assert f"1. proxy {proxy.shown}: FAILED (above)" in text and "through it" not in text, text


# -- config ---------------------------------------------------------------------------------
def _load(tmp_path: Path, instance: dict[str, Any]) -> list[str]:
    try:
        load_config(write_config(tmp_path, {"partner": instance}, {}))
    except ConfigError as e:
        return [f"{p.path}: {p.message}" for p in e.problems]
    return []


def test_a_jump_host_is_always_verified_and_errors_name_the_hop(tmp_path: Path) -> None:
    base = {"type": "sftp", "host": "h", "username": "u", "password": "p", "host_fingerprint": WRONG}
    problems = _load(tmp_path, {**base, "jump": [{"host": "bastion", "username": "j", "password": "q"}]})
    assert any(p.startswith("instances.partner.jump[0]") and "no way to verify the host key" in p for p in problems)
    problems = _load(
        tmp_path, {**base, "jump": [{"host": "b", "username": "j", "password": "q", "host_key_check": "off"}]}
    )
    assert any("instances.partner.jump[0].host_key_check" in p for p in problems), problems
    assert any("jump is an empty list" in p for p in _load(tmp_path, {**base, "jump": []}))
    assert any(
        "instances.partner.proxy" in p and "socks5://" in p for p in _load(tmp_path, {**base, "proxy": "ftp://x:1"})
    )


def test_jump_host_secrets_are_redacted() -> None:
    cfg = SftpConfig.model_validate(
        {
            "type": "sftp",
            "host": "h",
            "username": "u",
            "password": "p1-secret",
            "host_fingerprint": WRONG,
            "jump": [{"host": "b", "username": "j", "password": "hop-secret", "host_fingerprint": WRONG}],
        }
    )
    assert {"p1-secret", "hop-secret"} <= set(cfg.secrets())
    assert "hop-secret" not in repr(cfg)


def test_weak_settings_of_a_jump_host_are_warned_at_its_key(tmp_path: Path) -> None:
    from conveyor.transport_warnings import transport_warnings

    hop = {"host": "b", "username": "j", "password": "q", "host_fingerprint": WRONG, "legacy_algorithms": True}
    inst = {"type": "sftp", "host": "h", "username": "u", "password": "p", "host_fingerprint": WRONG, "jump": [hop]}
    config = load_config(write_config(tmp_path, {"partner": inst}, {}))
    keys = [w.key for w in transport_warnings(config)]
    assert keys == ["instances.partner.jump[0].legacy_algorithms"]
