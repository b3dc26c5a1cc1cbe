"""Config model of the ``sftp`` instance type (pydantic only; asyncssh lives in pool.py and instance.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from conveyor.config.base import FileSourceConfig, FileTargetConfig, InstanceConfig
from conveyor.config.types import ConfigModel, Duration, Secret
from conveyor.netloc import hostport
from conveyor.proxy import PROXY_HELP, ProxyUrl, check_proxy_setting, proxy_of
from conveyor.registry import ConnectorSpec, register
from conveyor.transfer.remote_root import ROOT_HELP, normalise_root
from conveyor.transfer.segments import streams_field
from conveyor.transfer.sftp.hostkeys import Fingerprint, parse_fingerprint


def _valid_fingerprint(text: str) -> str:
    parse_fingerprint(text)  # raises ValueError naming the accepted forms
    return text


FingerprintText = Annotated[str, AfterValidator(_valid_fingerprint)]
"""One host key fingerprint in any accepted form (checked item by item, so errors name the index)."""


class SftpAlgorithms(BaseModel):
    """SSH algorithms offered to the server, each list in order of preference (unset: the defaults)."""

    model_config = ConfigDict(extra="forbid")

    kex: list[str] | None = Field(None, description="key exchange algorithms")
    ciphers: list[str] | None = Field(None, description="encryption algorithms")
    macs: list[str] | None = Field(None, description="MAC algorithms")
    host_keys: list[str] | None = Field(None, description="host key (signature) algorithms accepted from the server")
    compression: list[str] | None = Field(None, description="compression algorithms (none, zlib@openssh.com, zlib)")

    @field_validator("kex", "ciphers", "macs", "host_keys", "compression")
    @classmethod
    def _supported(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        from conveyor.transfer.sftp.algorithms import check_names  # asyncssh only when the key is used

        return None if v is None else check_names(str(info.field_name), v)


class SshHostConfig(ConfigModel):
    """One SSH server to log in to: the address, the credentials, the host-key check and the algorithms.

    An sftp instance is one; so is each of its ``jump`` hosts.
    """

    host: str = Field(min_length=1, description="server host name or address")
    port: int = Field(22, ge=1, le=65535, description="SSH port")
    username: str = Field(min_length=1, description="login name")
    password: Secret | None = Field(
        None,
        description="password (also answers keyboard-interactive password prompts); with a private key, "
        "both are offered (servers that require both)",
    )
    private_key: Secret | None = Field(
        None, description="private key text (RSA PEM or OpenSSH: ed25519, ecdsa, rsa); or private_key_file"
    )
    private_key_file: Path | None = Field(None, description="path of the private key file")
    passphrase: Secret | None = Field(None, description="passphrase of an encrypted private key")
    certificate_file: Path | None = Field(
        None,
        description="OpenSSH user certificate of the private key (ssh-keygen -s); default: "
        "<private_key_file>-cert.pub when that file exists",
    )
    agent: str | None = Field(
        None,
        description="ssh-agent socket whose keys are offered, after private_key (agent: ${SSH_AUTH_SOCK})",
    )
    host_fingerprint: list[FingerprintText] | None = Field(
        None,
        description="the server's host key fingerprint, or a list of them (key rotation): SHA256:<base64>, "
        "MD5 hex (colons and MD5: prefix optional) or SHA512 hex of the key blob",
    )
    known_hosts: Path | None = Field(
        None, description="an OpenSSH known_hosts file to check the host key against (@cert-authority lines too)"
    )
    host_ca: list[str] | None = Field(
        None,
        description="certificate authority of the server's host certificate: a CA public key "
        "(ssh-ed25519 AAAA...) or the path of a file of them, or a list",
    )
    algorithms: SftpAlgorithms | None = Field(
        None,
        description="SSH algorithm lists offered to the server: kex, ciphers, macs, host_keys, compression "
        "(each replaces that default; names as OpenSSH spells them)",
    )
    legacy_algorithms: bool = Field(
        False,
        description="also offer what old servers need: SHA-1 key exchanges and CBC ciphers "
        "(a warning at start and in /status)",
    )

    @field_validator("host_fingerprint", "host_ca", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("host_fingerprint", "host_ca")
    @classmethod
    def _not_empty(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if v is not None and not v:
            raise ValueError(f"{info.field_name} is an empty list: give at least one")
        return v

    @field_validator("private_key")
    @classmethod
    def _looks_like_key(cls, v: Any) -> Any:
        if v is not None and "-----BEGIN" not in v.get_secret_value():
            raise ValueError(
                "private_key must be the key text (-----BEGIN ... PRIVATE KEY-----); for a path use private_key_file"
            )
        return v

    @property
    def verified(self) -> bool:
        """Whether the host key is checked (a jump host's always is)."""
        return True

    @model_validator(mode="after")
    def _auth_and_host_key(self) -> Self:
        keys = [n for n in ("private_key", "private_key_file") if getattr(self, n) is not None]
        if len(keys) == 2:
            raise ValueError("give either private_key or private_key_file, not both")
        if self.agent is not None and not self.agent.strip():
            raise ValueError("agent is empty (is SSH_AUTH_SOCK set?): give the ssh-agent socket path")
        if self.password is None and not keys and self.agent is None:
            raise ValueError("no credentials: set password, private_key / private_key_file, or agent")
        if self.passphrase is not None and not keys:
            raise ValueError("passphrase is set but there is no private key to decrypt")
        if self.certificate_file is not None and not keys:
            raise ValueError("certificate_file is set but there is no private key it certifies")
        ways = [n for n in ("host_fingerprint", "known_hosts", "host_ca") if getattr(self, n)]
        if len(ways) > 1 and "host_ca" in ways:
            # One rule decides; a CA next to pinned keys belongs in known_hosts as @cert-authority.
            raise ValueError(
                f"give one of {' / '.join(ways)}: for a CA and pinned keys together, "
                "put the CA in known_hosts as a @cert-authority line"
            )
        if self.verified and not ways:
            raise ValueError(self._no_host_key_check())
        return self

    def _no_host_key_check(self) -> str:
        return (
            "no way to verify the host key of a jump host (it is always verified): set host_fingerprint, "
            "known_hosts or host_ca; `conveyor fingerprint HOST[:PORT]` prints the server's fingerprints"
        )

    def fingerprints(self) -> list[Fingerprint]:
        """The pinned fingerprints, parsed."""
        return [parse_fingerprint(f) for f in self.host_fingerprint or []]

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``), as messages name the server."""
        return hostport(self.host, self.port)

    def describe(self) -> str:
        """``user@host:port``."""
        return f"{self.username}@{self.address}"


class JumpHost(SshHostConfig):
    """An SSH server conveyor logs in to first, and reaches the next hop (or the server) through."""


class SftpConfig(SshHostConfig, InstanceConfig):
    """An SFTP server: the fields a Patchworks SFTP instance has, plus known_hosts and pooling."""

    type: Literal["sftp"]
    host_key_check: Literal["on", "off"] = Field(
        "on", description="off skips host key verification (a warning on every connect and in /status)"
    )
    jump: list[JumpHost] | None = Field(
        None,
        description="jump hosts (bastions) to reach the server through, in order; each takes host, port, "
        "username, its own credentials and host-key check (never unverified), like the instance",
    )
    proxy: Secret | None = Field(None, description=PROXY_HELP + "; with jump, to reach the first jump host")
    _proxy_parses = field_validator("proxy")(check_proxy_setting)
    root: str = Field("", description=ROOT_HELP)
    _root_from_login = field_validator("root", mode="before")(normalise_root)
    follow_symlinked_folders: bool = Field(
        False,
        description="recursive listings descend into symlinked folders (each real folder listed once; a link "
        "loop is skipped with a warning); off: they are left out (links to files are taken either way)",
    )
    timeout: Duration = Field(10.0, gt=0, description="connect timeout, and the limit for every operation")
    max_connection_attempts: int = Field(3, ge=1, description="attempts per connect before the instance is down")
    max_connections: int = Field(4, ge=1, le=64, description="SSH connections (SFTP sessions) kept to this server")
    keepalive: Duration = Field(30.0, description="SSH keepalive interval on idle connections (0: none)")
    streams: int | None = streams_field("taking parts of the file", "one large download or upload is moved over")

    @field_validator("host_key_check", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as False; accept booleans as on/off.
        if isinstance(v, bool):
            return "on" if v else "off"
        return v

    @field_validator("jump")
    @classmethod
    def _some_hops(cls, v: list[JumpHost] | None) -> list[JumpHost] | None:
        if v is not None and not v:
            raise ValueError("jump is an empty list: give at least one hop, or leave jump out")
        return v

    @property
    def verified(self) -> bool:
        """Whether the host key is checked (``host_key_check: on``)."""
        return self.host_key_check == "on"

    def _no_host_key_check(self) -> str:
        return (
            "no way to verify the host key: set host_fingerprint, known_hosts or host_ca (or host_key_check: "
            "off); `conveyor fingerprint HOST[:PORT]` prints the server's fingerprints"
        )

    def proxy_url(self) -> ProxyUrl | None:
        """The parsed ``proxy``, or None to connect directly."""
        return proxy_of(self.proxy)


register(
    ConnectorSpec(
        type="sftp",
        kind="file",
        instance_model=SftpConfig,
        source_model=FileSourceConfig,
        target_model=FileTargetConfig,
        factory="conveyor.transfer.sftp.instance:SftpInstance",
    )
)
