"""``proxy:`` for FTP/FTPS instances and the http target, through real proxies on loopback:
microsocks (SOCKS5 with username auth) and tinyproxy (HTTP CONNECT with basic auth). Each test
shows the connections went through the proxy (its log names every tunnel's destination), and a
stopped proxy fails naming the proxy, without its password and without a direct connection."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from pydantic import ValidationError

from conveyor.errors import Transient
from conveyor.payload import Body, Payload
from conveyor.proxy import parse_proxy
from conveyor.targets.http.config import HttpTargetConfig
from conveyor.targets.http.target import HttpTarget
from conveyor.transfer.ftp.config import FtpConfig
from tests.backends.ftp import ftp_instance
from tests.harness import write_config
from tests.servers.ops import http_sink, serve, wait_for
from tests.servers.proxies import proxy_factory
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory
from tests.test_check_connect import check, flow_line

__all__ = ["proxy_factory", "vsftpd_certs", "vsftpd_factory"]


# -- the setting ----------------------------------------------------------------------------
def test_parse_proxy_forms_and_hides_the_password() -> None:
    p = parse_proxy("socks5://me:s%3Ac%40ret@proxy.example:1080")
    assert (p.scheme, p.host, p.port, p.username, p.password) == ("socks5", "proxy.example", 1080, "me", "s:c@ret")
    assert str(p) == "socks5://me@proxy.example:1080"
    assert "ret" not in repr(p)
    assert str(parse_proxy("http://[::1]:3128")) == "http://[::1]:3128"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("socks4://p:1080", "expected socks5:// .* or http://"),
        ("https://p:3128", "expected socks5:// .* or http://"),
        ("proxy:3128", "expected socks5://"),
        ("socks5://p", "no port"),
        ("socks5://:1080", "no host"),
        ("http://p:99999", "not a URL"),
        ("http://p:3128/path", "only scheme, credentials, host and port"),
        ("http://:pw@p:3128", "password but no username"),
    ],
)
def test_bad_proxy_is_a_config_error_without_the_password(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_proxy(value)
    base = {"type": "ftp", "host": "ftp.example"}
    with pytest.raises(ValidationError, match=reason) as e:
        FtpConfig.model_validate({**base, "proxy": value})
    assert "pw@" not in str(e.value)
    with pytest.raises(ValidationError, match=reason):
        HttpTargetConfig.model_validate({"type": "http", "url": "http://x/", "proxy": value})


def test_proxy_with_active_ftp_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="proxy needs passive mode"):
        FtpConfig.model_validate({"type": "ftp", "host": "h", "proxy": "socks5://p:1080", "passive": False})


def test_proxy_password_stays_out_of_reprs_and_dumps() -> None:
    cfg = FtpConfig.model_validate({"type": "ftp", "host": "h", "proxy": "http://u:hunter2@p:3128"})
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in str(cfg.model_dump(mode="json"))
    assert cfg.proxy_url is not None and cfg.proxy_url.password == "hunter2"


async def test_http_proxy_keeps_server_bytes_sent_with_its_answer() -> None:
    # tinyproxy sometimes passes an FTP server's welcome on in the same segment as its 200; this
    # in-process proxy does so every time, so the loss it caused shows deterministically.
    done = asyncio.Event()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n220 welcome\r\n")
            await writer.drain()
            await reader.read()
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sock = await parse_proxy(f"http://127.0.0.1:{port}").connect("ftp.example", 21, 5)
        with sock:
            async with asyncio.timeout(5):
                assert await asyncio.get_running_loop().sock_recv(sock, 100) == b"220 welcome\r\n"
        await asyncio.wait_for(done.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()


# -- FTP and FTPS through each proxy ----------------------------------------------------------
def _put(srv: Any, rel: str, data: bytes) -> None:
    p: Path = srv.root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    srv.own(p.parent)
    p.write_bytes(data)
    srv.own(p)


@pytest.mark.parametrize("kind", ["socks5", "http"])
@pytest.mark.parametrize("tls", ["none", "explicit", "implicit"])
async def test_ftp_control_and_every_data_channel_go_through_the_proxy(
    vsftpd_factory: Any, proxy_factory: Any, tmp_path: Path, kind: str, tls: str
) -> None:
    srv = vsftpd_factory(tls)
    proxy = proxy_factory(kind)
    data = os.urandom(1024 * 1024 + 7)
    _put(srv, "in/a.bin", data)
    inst, _, spool = ftp_instance(srv.config(proxy=proxy.url()), tmp_path / "spool")
    try:
        line = await inst.check()
        if tls != "none":
            assert "TLS" in line  # TLS ran inside the tunnel, and vsftpd's session reuse held
        files = {f.path: f async for f in inst.list("in", True)}
        w = spool.writer()
        await inst.download(files["in/a.bin"], w)
        body = w.finish()
        assert await body.digest() == hashlib.sha256(data).hexdigest()
        assert await inst.upload(body, "out/a.bin", exists="replace", chmod=None)
        body.release()
        assert (srv.root / "out/a.bin").read_bytes() == data
    finally:
        await inst.close()
    ports = proxy.destinations()
    assert proxy.tunnels() == len(ports)
    # One control connection, then one tunnel per data channel (listing, download, upload at least).
    assert ports.count(srv.port) == 1, ports
    data_ports = [p for p in ports if p != srv.port]
    assert len(data_ports) >= 3, ports


@pytest.mark.parametrize("kind", ["socks5", "http"])
async def test_ftp_with_the_proxy_stopped_fails_naming_it_and_never_goes_direct(
    vsftpd_factory: Any, proxy_factory: Any, tmp_path: Path, kind: str
) -> None:
    srv = vsftpd_factory("none")
    proxy = proxy_factory(kind)
    proxy.stop()
    await _refused(srv, proxy, tmp_path, "cannot connect")


@pytest.mark.parametrize("kind", ["socks5", "http"])
async def test_ftp_with_wrong_proxy_credentials_is_refused_by_the_proxy(
    vsftpd_factory: Any, proxy_factory: Any, tmp_path: Path, kind: str
) -> None:
    srv = vsftpd_factory("none")
    proxy = proxy_factory(kind)
    await _refused(srv, proxy, tmp_path, f"refused the connection to 127.0.0.1:{srv.port}", password="wrong")
    assert proxy.tunnels() == 0


async def _refused(srv: Any, proxy: Any, tmp_path: Path, reason: str, password: str | None = None) -> None:
    """check() fails naming the proxy and ``reason``, without its password, and vsftpd saw no one."""
    inst, status, _ = ftp_instance(srv.config(proxy=proxy.url(password)), tmp_path / "spool")
    # vsftpd forks a process per connection: once the start-up probe's is gone, any new one is ours.
    await wait_for(lambda: srv.session_pids() == [])
    try:
        with pytest.raises(Transient, match=f"proxy {proxy.shown}: {reason}") as e:
            await inst.check()
        assert proxy.password not in str(e.value)
        assert srv.session_pids() == []  # no direct connection instead
        assert inst.pool.connects == 0
        assert proxy.password not in str(status.instances["ftp-test"].__dict__)
    finally:
        await inst.close()


async def test_ftp_through_a_proxy_that_never_answers_times_out_naming_it(vsftpd_factory: Any, tmp_path: Path) -> None:
    srv = vsftpd_factory("none")
    with socket.socket() as silent:  # accepts (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"socks5://u:secret@127.0.0.1:{silent.getsockname()[1]}"
        inst, _, _ = ftp_instance(srv.config(proxy=url, timeout="1s"), tmp_path / "spool")
        try:
            with pytest.raises(Transient, match=r"timed out after 1s \(127.0.0.1 through proxy socks5://u@127"):
                await inst.check()
        finally:
            await inst.close()


async def test_check_connect_goes_through_the_proxy_and_names_it_when_down(
    vsftpd_factory: Any, proxy_factory: Any, tmp_path: Path
) -> None:
    srv = vsftpd_factory("explicit")
    proxy = proxy_factory("socks5")
    _put(srv, "out/a.csv", b"a")
    flows = {
        "pull": {
            "source": {"instance": "partner", "path": "out"},
            "target": {"type": "directory", "path": str(tmp_path / "in")},
        }
    }
    cfg = write_config(tmp_path, {"partner": srv.config(proxy=proxy.url())}, flows)
    rc, lines = await check(cfg)
    assert rc == 0, lines
    assert "folder exists, listed: 1 file" in flow_line(lines, "pull")
    assert srv.port in proxy.destinations()
    proxy.stop()
    rc, lines = await check(cfg)
    assert rc == 2, lines
    assert flow_line(lines, "pull").startswith("  FAIL"), lines
    want = f"FAIL  partner (ftp): instance 'partner': 127.0.0.1:{srv.port}: proxy {proxy.shown}: cannot connect"
    assert any(want in x for x in lines), lines
    assert proxy.password not in "\n".join(lines)


# -- the http target through each proxy -------------------------------------------------------
def _payload(data: bytes) -> Payload:
    return Payload(
        id="9a1b" * 8,
        flow="orders",
        source_instance="partner",
        source_type="sftp",
        body=Body.from_bytes(data),
        name="o.csv",
        file={"path": "out/o.csv", "mtime": "x"},
    )


def _http_target(url: str, proxy: str, **kw: Any) -> HttpTarget:
    return HttpTarget("orders", HttpTargetConfig.model_validate({"type": "http", "url": url, "proxy": proxy, **kw}))


@pytest.mark.parametrize("kind", ["socks5", "http"])
async def test_http_target_posts_through_the_proxy(proxy_factory: Any, kind: str) -> None:
    proxy = proxy_factory(kind)
    async with http_sink() as sink:
        port = int(sink.url.split(":")[2].split("/")[0])
        target = _http_target(sink.url, proxy.url())
        try:
            await target.deliver(_payload(b"a,b\n1,2\n"))
            assert "answered HEAD with 200" in await target.probe()
        finally:
            await target.close()
        assert sink.received[0].body == b"a,b\n1,2\n"
    assert proxy.tunnels() >= 1 and set(proxy.destinations()) == {port}


@pytest.mark.parametrize("kind", ["socks5", "http"])
async def test_https_target_verifies_the_endpoint_inside_the_tunnel(
    proxy_factory: Any, tmp_path: Path, kind: str
) -> None:
    proxy = proxy_factory(kind)
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def ok(_r: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", ok)
    async with serve(app, ssl_context=server_ctx) as port:
        trusted = _http_target(f"https://127.0.0.1:{port}/hook", proxy.url(), ca_file=str(ca_file))
        untrusted = _http_target(f"https://127.0.0.1:{port}/hook", proxy.url())
        try:
            await trusted.deliver(_payload(b"over TLS"))
            with pytest.raises(Transient, match="certificate"):
                await untrusted.deliver(_payload(b"x"))
        finally:
            await trusted.close()
            await untrusted.close()
    assert set(proxy.destinations()) == {port}


@pytest.mark.parametrize("kind", ["socks5", "http"])
async def test_http_target_with_the_proxy_stopped_fails_naming_it(proxy_factory: Any, kind: str) -> None:
    proxy = proxy_factory(kind)
    proxy.stop()
    async with http_sink() as sink:
        target = _http_target(sink.url, proxy.url())
        try:
            with pytest.raises(Transient, match=f"POST .*: proxy {proxy.shown}:") as e:
                await target.deliver(_payload(b"x"))
            assert proxy.password not in str(e.value)
            with pytest.raises(Transient, match=f"HEAD: proxy {proxy.shown}:"):
                await target.probe()
        finally:
            await target.close()
        assert sink.received == []  # no direct connection instead


async def test_http_target_through_a_proxy_that_never_answers_times_out_naming_it() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://u:secret@127.0.0.1:{silent.getsockname()[1]}"
        target = _http_target("http://x.invalid/", url, timeout="1s")
        try:
            with pytest.raises(Transient, match=r"no progress for 1s \(timeout through proxy http://u@127") as e:
                await target.deliver(_payload(b"x"))
            assert "secret" not in str(e.value)
        finally:
            await target.close()
