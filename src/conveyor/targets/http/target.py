"""The ``http`` target: one POST per payload, the body streamed from memory or the spool.

Status classes::

    2xx                 delivered
    408, 429, 5xx       Transient (RetryAfter when the server sent Retry-After)
    network, timeout    Transient (a connection closed before any answer is first tried
                        once more at once: a stale keep-alive connection)
    anything else       Rejected (a permanent failure of this payload), with the status
                        and a short, redacted excerpt of the response body

``timeout`` is an inactivity limit, not a cap on the whole request: connecting, each
chunk of the body being taken by the socket, and the wait for the response must each
happen within it, so a 4 GiB upload is not cut off while a stalled server still is.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import mimetypes
import ssl
import time
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp_socks import ProxyConnectionError, ProxyConnector, ProxyError, ProxyTimeoutError, ProxyType
from yarl import URL

from conveyor import __version__, traces
from conveyor.errors import Rejected, RetryAfter, Transient
from conveyor.interfaces import Context
from conveyor.payload.payload import Payload
from conveyor.proxy import SCHEMES
from conveyor.redact import redact
from conveyor.targets.http.config import HttpTargetConfig
from conveyor.targets.http.inactivity import Guard, Watchdog

log = logging.getLogger("conveyor.http")

_EXCERPT = 200
MAX_RETRY_AFTER = 3600.0
"""A Retry-After beyond an hour is taken as an hour: the item is not parked for days."""
ANSWER_CAP = 64 * 1024
"""Bytes of a 2xx answer's body read (and dropped): enough for any acknowledgement, so the
connection goes back to the pool; past it the connection is closed instead, and a server
that answers without end costs neither memory nor time."""


def _meta_encoder() -> Callable[[Any], str]:
    """``json.dumps(doc, separators=(",", ":"), ensure_ascii=True)``, made once: json.dumps builds
    its C encoder afresh for every call, which costs as much as the encoding of a metadata
    document. This is the same C encoder, with the same arguments json.dumps gives it."""
    enc = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: json's own way
        return enc.encode
    c = make(None, enc.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda doc: "".join(c(doc, 0))


_META_JSON = _meta_encoder()


_ENCODED = {k.lower() for k in mimetypes.encodings_map}


def _guess_type(name: str) -> str | None:
    """mimetypes' guess for a file name, remembered per suffix: a name without a compression
    suffix (``.gz``), a suffix alias (``.tgz``) or a URL scheme (``data:``) is judged by its
    last suffix alone, and a flow's names share a few."""
    # posixpath.splitext's rule, inline: a suffix follows a name part that is not all dots.
    slash, dot = name.rfind("/"), name.rfind(".")
    if dot <= slash + 1 or not name[slash + 1 : dot].strip(".") or ":" in name:
        return mimetypes.guess_type(name)[0]
    ext = name[dot:]
    if ext in _BY_SUFFIX:
        return _BY_SUFFIX[ext]
    if ext in mimetypes.suffix_map or ext.lower() in _ENCODED:
        return mimetypes.guess_type(name)[0]
    if len(_BY_SUFFIX) >= 256:
        _BY_SUFFIX.clear()
    found = _BY_SUFFIX[ext] = mimetypes.guess_type("x" + ext)[0]
    return found


_BY_SUFFIX: dict[str, str | None] = {}


class HttpRejected(Rejected):
    """The server answered with a status that retrying will not change."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


PROXY_ERRORS = (ProxyConnectionError, ProxyError, ProxyTimeoutError)
"""What aiohttp-socks raises when the proxy is down or refuses (not aiohttp's own errors)."""


class HttpTarget:
    """POSTs each payload of one flow to ``config.url``; one pooled client session per target."""

    def __init__(self, flow: str, config: HttpTargetConfig) -> None:
        self.flow = flow
        self.config = config
        self.url = URL(config.url)
        # Errors name the endpoint without credentials or query string (tokens live there).
        self.where = str(self.url.with_user(None).with_password(None).with_query(None).with_fragment(None))
        self._session: aiohttp.ClientSession | None = None
        self._watchdog = Watchdog(config.timeout)
        proxy = config.proxy_url
        self._via = f" through proxy {proxy}" if proxy is not None else ""

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.config.tls_verify:
            return False
        return ssl.create_default_context(cafile=self.config.ca_file)

    def session(self) -> aiohttp.ClientSession:
        """The target's client session, created on first use (inside the running loop)."""
        if self._session is None or self._session.closed:
            tls = self._ssl() if self.url.scheme == "https" else False
            proxy = self.config.proxy_url
            connector = (
                aiohttp.TCPConnector(ssl=tls, limit=0)
                if proxy is None
                # Every request tunnels through the proxy (CONNECT or SOCKS5, also for http:// urls);
                # the proxy resolves the endpoint's name, and TLS to the endpoint runs inside the tunnel.
                else ProxyConnector(
                    proxy_type=ProxyType[SCHEMES[proxy.scheme]],
                    host=proxy.host,
                    port=proxy.port,
                    username=proxy.username,
                    password=proxy.password,
                    rdns=True,
                    ssl=tls,
                    limit=0,
                )
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"User-Agent": f"conveyor/{__version__}"},
            )
        return self._session

    async def headers(self, payload: Payload) -> dict[str, str]:
        """The request headers for one payload."""
        meta = await payload.metadata()
        ctype = self.config.content_type
        if ctype is None and payload.name:
            ctype = _guess_type(payload.name)
        h = {"Content-Type": ctype or payload.content_type}
        h.update(self.config.headers)
        h["Idempotency-Key"] = payload.id
        h["X-Conveyor-Flow"] = self.flow
        h["X-Conveyor-Meta"] = base64.urlsafe_b64encode(_META_JSON(meta).encode()).decode("ascii")
        h["Content-Length"] = str(payload.body.size)
        traces.inject(h)
        return h

    async def deliver(self, payload: Payload) -> None:
        """POST the payload; returns on 2xx, raises Transient/RetryAfter/Rejected otherwise."""
        headers = await self.headers(payload)
        try:
            await self._post(payload, headers, reused_ok=False)
        except _Disconnected:
            # Most often a pooled keep-alive connection the server closed just as we sent on it
            # (its idle timeout raced ours): one immediate try on another connection, as HTTP
            # clients do. The Idempotency-Key makes a repeat harmless if the server did get it.
            log.debug(
                "POST %s: connection closed before an answer; trying once more",
                self.where,
                extra={"flow": self.flow, "payload_id": payload.id},
            )
            await self._post(payload, headers, reused_ok=True)

    async def _post(self, payload: Payload, headers: dict[str, str], *, reused_ok: bool) -> None:
        limit = self.config.timeout
        guard = self._watchdog.start()
        try:
            await guard.run(self._exchange(payload, headers, guard))
        except (Transient, Rejected):
            raise
        except TimeoutError:
            raise Transient(f"POST {self.where}: no progress for {limit:g}s (timeout{self._via})") from None
        except PROXY_ERRORS as e:
            raise Transient(f"POST {self.where}: proxy {self.config.proxy_url}: {redact(str(e))}") from None
        except (aiohttp.ClientError, OSError) as e:
            if not reused_ok and not isinstance(e, aiohttp.ClientConnectorError) and _disconnect(e):
                raise _Disconnected() from None
            raise _network_error(f"POST {self.where}", e) from None
        finally:
            self._watchdog.stop(guard)

    async def _exchange(self, payload: Payload, headers: dict[str, str], guard: Guard) -> None:
        """One POST and its answer, touching ``guard`` at each sign of progress."""
        started = time.monotonic()
        body = payload.body
        data: bytes | AsyncIterator[bytes] = body.data() if body.in_memory else _paced(body.chunks(), guard)
        async with self.session().post(self.url, data=data, headers=headers, allow_redirects=False) as resp:
            guard.touch()
            if 200 <= resp.status < 300:
                await _drain(resp, guard)
                log.debug(
                    "POST %s: %d in %.3fs",
                    self.where,
                    resp.status,
                    time.monotonic() - started,
                    extra={"flow": self.flow, "payload_id": payload.id},
                )
                return
            excerpt = await _excerpt(resp)
            raise _status_error(self.where, resp.status, resp.reason or "", excerpt, resp.headers.get("Retry-After"))

    async def probe(self) -> str:
        """Whether the endpoint answers, sending no payload (for ``check --connect``): a HEAD, then an
        OPTIONS if HEAD got a 5xx. Any answer below 500 counts and is described; Transient otherwise."""
        answers = []
        for method in ("HEAD", "OPTIONS"):
            try:
                async with asyncio.timeout(self.config.timeout):
                    async with self.session().request(
                        method, self.url, headers=self.config.headers, allow_redirects=False
                    ) as resp:
                        status, reason = resp.status, resp.reason or ""
            except TimeoutError:
                raise Transient(f"{method}: no answer within {self.config.timeout:g}s (timeout{self._via})") from None
            except PROXY_ERRORS as e:
                raise Transient(f"{method}: proxy {self.config.proxy_url}: {redact(str(e))}") from None
            except (aiohttp.ClientError, OSError) as e:
                raise _network_error(method, e) from None
            answer = f"{status} {reason}".rstrip()
            if status < 500:
                hint = " (redirects are not followed: point url at the final address)" if 300 <= status < 400 else ""
                return f"answered {method} with {answer}{hint}"
            answers.append(f"{method} with {answer}")
        raise Transient(f"answered {' and '.join(answers)}: the server fails")

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._watchdog.close()
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class _Disconnected(Exception):
    """The connection closed before any answer (possibly a stale pooled one)."""


def _network_error(what: str, e: BaseException) -> Transient:
    """A request that got no HTTP answer, as one line naming what was tried."""
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return Transient(f"{what}: TLS certificate not trusted: {redact(str(e.certificate_error))}")
    if isinstance(e, aiohttp.ClientConnectorError):
        return Transient(f"{what}: cannot connect: {redact(str(e.os_error.strerror or e))}")
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return Transient(f"{what}: the server closed the connection without answering")
    return Transient(f"{what}: {type(e).__name__}: {redact(str(e))}")


def _disconnect(e: BaseException) -> bool:
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return True
    if not isinstance(e, aiohttp.ClientOSError):
        return False
    # A reset, or a body write that met a transport already closing (no errno then).
    return e.errno in (errno.ECONNRESET, errno.EPIPE) or isinstance(e.__cause__, ConnectionResetError)


async def _paced(chunks: AsyncIterator[bytes], guard: Guard) -> AsyncIterator[bytes]:
    """The body's chunks, counting the limit afresh each time the socket took one."""
    async for chunk in chunks:
        guard.touch()
        yield chunk


async def _drain(resp: aiohttp.ClientResponse, guard: Guard) -> None:
    """Read and drop the answer's body, up to :data:`ANSWER_CAP` bytes; close the connection
    when there is more (nothing of it is kept: the answer to a delivery carries nothing we use)."""
    left = ANSWER_CAP
    while left > 0:
        chunk = await resp.content.read(min(left, 16384))
        if not chunk:
            return  # read to its end: the connection can be reused
        guard.touch()
        left -= len(chunk)
    if not resp.content.at_eof():
        resp.close()


async def _excerpt(resp: aiohttp.ClientResponse) -> str:
    try:
        raw = await resp.content.read(1024)
    except (aiohttp.ClientError, OSError):
        return ""
    text = " ".join(raw.decode("utf-8", "replace").split())
    if len(text) > _EXCERPT:
        text = text[:_EXCERPT] + "…"
    return redact(text)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return min(max(0.0, when.timestamp() - (now if now is not None else time.time())), MAX_RETRY_AFTER)


def _status_error(where: str, status: int, reason: str, excerpt: str, retry_header: str | None) -> Exception:
    msg = f"POST {where}: HTTP {status} {reason}".rstrip() + (f": {excerpt}" if excerpt else "")
    if status in (408, 429) or status >= 500:
        delay = retry_after(retry_header)
        if delay is not None:
            return RetryAfter(msg + f" (Retry-After {delay:g}s)", delay)
        return Transient(msg)
    if 300 <= status < 400:
        msg += " (redirects are not followed: point url at the final address)"
    return HttpRejected(msg, status)


def meta_header(value: str) -> dict[str, Any]:
    """Decode an ``X-Conveyor-Meta`` header (for receivers written in Python, and the tests)."""
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(value.encode("ascii")))
    return decoded


def create(flow: str, config: HttpTargetConfig, context: Context) -> HttpTarget:
    """The registry's factory: an http target needs nothing from the daemon."""
    return HttpTarget(flow, config)
