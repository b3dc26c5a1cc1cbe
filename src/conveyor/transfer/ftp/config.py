"""Config model of the ``ftp`` instance type: FTP and FTPS (pydantic only; the client lives in client.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from conveyor.config.base import FileSourceConfig, FileTargetConfig, InstanceConfig
from conveyor.config.types import Duration, Secret, Size
from conveyor.netloc import hostport
from conveyor.proxy import PROXY_HELP, ProxyUrl, check_proxy_setting, proxy_of
from conveyor.registry import ConnectorSpec, register
from conveyor.transfer.remote_root import ROOT_HELP, normalise_root
from conveyor.transfer.segments import streams_field

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CLIENT_CERT_KEYS = ("client_certificate_file", "client_key_file", "client_key_passphrase")


def parse_tls_fingerprint(value: str) -> str:
    """Normalise a SHA-256 certificate fingerprint to 64 lower-case hex digits.

    Accepts ``AB:CD:...`` (as ``openssl x509 -fingerprint -sha256`` prints it, optionally
    prefixed ``sha256:`` or ``SHA256 Fingerprint=``), or bare hex.
    """
    v = value.strip()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        if v.lower().startswith(prefix):
            v = v[len(prefix) :]
    v = v.replace(":", "").replace(" ", "").lower()
    if not _HEX64.match(v):
        raise ValueError(
            "tls_fingerprint must be the SHA-256 of the server certificate (DER): 64 hex digits, "
            "colons optional, e.g. as `openssl x509 -noout -fingerprint -sha256` prints it"
        )
    return v


MAX_LISTING_ENTRIES = 100_000
"""Default cap on listing entries per poll. A folder this big already takes minutes per poll over
FTP; the parsed entries and the source's tables for them stay in the tens of MB at the cap."""
MAX_LISTING_BYTES = 64 * 1024 * 1024
"""Default cap on listing bytes per poll: 100,000 MLSD lines are ~12 MB; 64 MiB leaves room for
long names and verbose ``LIST`` formats, and at a slow 1 MB/s is still read within a minute."""
LISTING_TIMEOUT = 300.0
"""Default deadline of one folder's listing: a trickling server cannot hold a poll for ever."""


class FtpConfig(InstanceConfig):
    """An FTP or FTPS server: the fields a Patchworks FTP instance has, plus TLS details and pooling.

    Passive data channels go to the control connection's address, whatever a PASV reply announces
    (as curl and ftplib do): a hostile server could otherwise point them at any host and port.
    ``pasv_trust_address: true`` is the opt-in to the announced address. Patchworks'
    ``ignore_passive_address`` (whose form text says "true means active mode" and mixes two
    settings; active mode here is ``passive: false``) is accepted: ``true`` is what happens anyway.
    """

    type: Literal["ftp"]
    host: str = Field(min_length=1, description="server host name or address")
    port: int | None = Field(None, ge=1, le=65535, description="control port (default 21; 990 with tls: implicit)")
    username: str = Field("anonymous", min_length=1, description="login name")
    password: Secret | None = Field(None, description="password")
    tls: Literal["none", "explicit", "implicit"] = Field(
        "none",
        description="none | explicit (AUTH TLS on the control port, Patchworks' `SSL: true`) | "
        "implicit (TLS from the first byte, usually port 990); data channels are encrypted too (PROT P)",
    )
    tls_verify: bool = Field(
        True, description="verify the server certificate (false: a warning on every connect and in /status)"
    )
    ca_file: Path | None = Field(None, description="PEM file of CA certificates to trust instead of the system's")
    tls_fingerprint: str | None = Field(
        None,
        description="SHA-256 of the server certificate (DER, hex, colons optional): pins a self-signed "
        "certificate; chain and host name are then not checked",
    )
    tls_max_version: Literal["1.2", "1.3"] | None = Field(
        None, description="highest TLS version to offer (1.2 for servers whose TLS 1.3 session reuse is broken)"
    )
    client_certificate_file: Path | None = Field(
        None,
        description="PEM file of the client certificate to present, for servers that require one (mutual "
        "TLS): the certificate first, then any intermediate CA certificates; may also hold its private key",
    )
    client_key_file: Path | None = Field(
        None,
        description="PEM file of the client certificate's private key (default: the key in client_certificate_file)",
    )
    client_key_passphrase: Secret | None = Field(None, description="passphrase of an encrypted client certificate key")
    passive: bool = Field(True, description="passive mode (EPSV, then PASV); false: active mode (EPRT/PORT)")
    pasv_trust_address: bool = Field(
        False,
        description="connect passive data channels to the address a PASV reply announces; false: to the "
        "control connection's address (a hostile server cannot send them elsewhere, and servers behind "
        "NAT that announce a private address work); EPSV replies carry no address anyway",
    )
    ignore_passive_address: bool | None = Field(
        None,
        description="accepted for Patchworks configs and otherwise ignored: `true` is what happens anyway; "
        "`false` does not make conveyor trust PASV addresses (that is `pasv_trust_address: true`)",
    )
    proxy: Secret | None = Field(None, description=PROXY_HELP + "; needs passive mode")
    _proxy_parses = field_validator("proxy")(check_proxy_setting)
    max_listing_entries: int = Field(
        MAX_LISTING_ENTRIES,
        ge=1,
        description="most entries (files, folders, links) one poll may list, all folders together; "
        "past it the poll fails with an error naming the folder, and is retried later",
    )
    max_listing_bytes: Size = Field(
        MAX_LISTING_BYTES,
        ge=1,
        description="most listing bytes (MLSD/LIST data) one poll may read, all folders together; "
        "past it the poll fails as for max_listing_entries",
    )
    listing_timeout: Duration = Field(
        LISTING_TIMEOUT,
        gt=0,
        description="longest time the listing of one folder may take, however steadily the server sends "
        "(timeout still bounds each wait for data)",
    )
    root: str = Field("", description=ROOT_HELP)
    _root_from_login = field_validator("root", mode="before")(normalise_root)
    timeout: Duration = Field(
        10.0,
        gt=0,
        description="connect timeout, and the limit for every operation "
        "(for transfers: the longest time without progress)",
    )
    max_connections: int = Field(2, ge=1, le=32, description="control connections kept to this server")
    keepalive: Duration = Field(60.0, description="send NOOP on connections idle this long (0: never)")
    streams: int | None = streams_field(
        "fetching parts of the file from their offsets (REST) on its own control and data connection"
    )

    @model_validator(mode="before")
    @classmethod
    def _patchworks_ssl_flag(cls, data: Any) -> Any:
        # A Patchworks FTP instance has `SSL: true`: accept `ssl: true|false` as tls explicit|none.
        if isinstance(data, dict) and "ssl" in data:
            data = dict(data)
            ssl = data.pop("ssl")
            if not isinstance(ssl, bool):
                raise ValueError("ssl must be true or false (or use tls: none | explicit | implicit)")
            if "tls" in data:
                raise ValueError("give either tls or ssl, not both")
            data["tls"] = "explicit" if ssl else "none"
        return data

    @field_validator("tls_fingerprint")
    @classmethod
    def _fingerprint_parses(cls, v: str | None) -> str | None:
        return parse_tls_fingerprint(v) if v is not None else None

    @property
    def proxy_url(self) -> ProxyUrl | None:
        """The parsed ``proxy``, or None to connect directly."""
        return proxy_of(self.proxy)

    @model_validator(mode="after")
    def _tls_options_need_tls(self) -> FtpConfig:
        if self.tls == "none":
            for name in ("ca_file", "tls_fingerprint", "tls_max_version", *_CLIENT_CERT_KEYS):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is set but tls is none: set tls: explicit or implicit")
        if self.client_certificate_file is None:
            for name in _CLIENT_CERT_KEYS[1:]:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is set but there is no client_certificate_file")
        if self.tls_fingerprint is not None and self.ca_file is not None:
            raise ValueError("give either ca_file or tls_fingerprint, not both")
        if self.pasv_trust_address and self.ignore_passive_address:
            raise ValueError("ignore_passive_address: true contradicts pasv_trust_address: true; give one")
        if self.proxy is not None and not self.passive:
            # Active mode has the server connect back to us: a proxy cannot carry that.
            raise ValueError("proxy needs passive mode: active mode (passive: false) cannot go through a proxy")
        return self

    def file_problems(self) -> list[tuple[str, str]]:
        """An unreadable, unparsable or mismatched client certificate or key file."""
        from conveyor.transfer.ftp.tls import ClientCertificateError, load_client_certificate

        try:
            load_client_certificate(None, self)
        except ClientCertificateError as e:
            return [(e.key, str(e))]
        return []

    @property
    def effective_port(self) -> int:
        """The configured port, or the default for the TLS mode."""
        if self.port is not None:
            return self.port
        return 990 if self.tls == "implicit" else 21

    def describe(self) -> str:
        """``user@host:port``, with the TLS mode when there is one."""
        scheme = "ftp" if self.tls == "none" else f"ftps-{self.tls}"
        return f"{scheme}://{self.username}@{hostport(self.host, self.effective_port)}"


register(
    ConnectorSpec(
        type="ftp",
        kind="file",
        instance_model=FtpConfig,
        source_model=FileSourceConfig,
        target_model=FileTargetConfig,
        factory="conveyor.transfer.ftp.instance:FtpInstance",
    )
)
