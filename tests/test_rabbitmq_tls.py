"""amqps: conveyor's TLS client settings against a TLS front (trustme certificates) that forwards to the
real broker, so the TLS handshake, CA pinning and client certificates are exercised for real without
reconfiguring the shared broker."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from conveyor.errors import Permanent
from tests.servers.rabbitmq import (
    HOST,
    PORT,
    Vhost,
    make_instance,
    rabbit_vhost_fixture,  # noqa: F401  (the rabbit_vhost fixture)
)


@contextlib.asynccontextmanager
async def tls_front(server_ctx: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS listener on a free port that pipes each connection, decrypted, to the broker."""
    tasks: set[asyncio.Task[Any]] = set()

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(HOST, PORT)
        for t in (asyncio.create_task(pipe(cr, sw)), asyncio.create_task(pipe(sr, cw))):
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("conveyor-client")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    return {"ca": ca, "server": server, "dir": tmp_path}


async def test_tls_with_pinned_ca_and_client_certificate(rabbit_vhost: Vhost, pki: dict[str, Any]) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["server"].configure_cert(ctx)
    pki["ca"].configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the client must present a certificate from the CA
    d = pki["dir"]
    async with tls_front(ctx) as port:
        inst = make_instance(
            rabbit_vhost,
            d / "spool",
            port=port,
            tls=True,
            ca_file=str(d / "ca.pem"),
            cert_file=str(d / "client.pem"),
            key_file=str(d / "client.key"),
        )
        assert await inst.check() == f"guest@127.0.0.1:{port}/{rabbit_vhost.name}"
        await inst.close()


async def test_tls_untrusted_server_is_permanent(rabbit_vhost: Vhost, pki: dict[str, Any]) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["server"].configure_cert(ctx)
    async with tls_front(ctx) as port:
        inst = make_instance(rabbit_vhost, pki["dir"] / "spool", port=port, tls=True)  # system CAs only
        with pytest.raises(Permanent, match="not trusted"):
            await inst.check()
        await inst.close()


async def test_tls_missing_ca_file_is_permanent(rabbit_vhost: Vhost, pki: dict[str, Any]) -> None:
    inst = make_instance(rabbit_vhost, pki["dir"] / "spool", tls=True, ca_file="/nonexistent/ca.pem")
    with pytest.raises(Permanent, match="TLS setup failed"):
        await inst.check()
    await inst.close()
