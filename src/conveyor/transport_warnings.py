"""Settings that leave a connection open to reading or impersonation, found in the config.

The daemon logs each at start (and after a reload) as one warning line naming the key, and
lists them under ``warnings`` in ``/status``. What only a connection can tell (an SSH server that
offers nothing better than SHA-1) is reported by the connector when it connects, the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.config import Config
from conveyor.targets.http.config import HttpTargetConfig

if TYPE_CHECKING:
    from conveyor.transfer.ftp.config import FtpConfig
    from conveyor.transfer.sftp.config import SftpConfig, SshHostConfig


@dataclass(frozen=True)
class TransportWarning:
    """One weak setting: the key that holds it and what it exposes."""

    key: str
    """Dotted config key, e.g. ``flows.orders.target.tls_verify``."""
    message: str
    instance: str | None = None
    """The instance it concerns, if any (its /status entry lists it too)."""

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def transport_warnings(config: Config) -> list[TransportWarning]:
    """Every weak transport setting in ``config``, instances first, then flows, then the state store."""
    out: list[TransportWarning] = []
    for name, inst in config.instances.items():
        key = f"instances.{name}"
        # By type name: a config without sftp instances does not load the sftp modules.
        if inst.type == "sftp":
            out += _sftp(key, name, inst)  # type: ignore[arg-type]  # the sftp type's model
        elif inst.type == "ftp":
            out += _ftp(key, name, inst)  # type: ignore[arg-type]  # the ftp type's model
    for name, flow in config.flows.items():
        for route in flow.routes:
            target = route.target
            if (
                isinstance(target, HttpTargetConfig)
                and not target.tls_verify
                and target.url.lower().startswith("https:")
            ):
                out.append(
                    TransportWarning(
                        f"flows.{name}.{route.key}.tls_verify",
                        "false: the server's certificate is not checked, so anyone on the way "
                        "can read and change what is posted",
                    )
                )
    if config.state.startswith(("postgresql://", "postgres://")):
        from conveyor.state.postgres import weak_tls

        why = weak_tls(config.state)
        if why is not None:
            out.append(TransportWarning("state", why))
    return out


def _sftp(key: str, name: str, cfg: SftpConfig) -> list[TransportWarning]:
    out = []
    if cfg.host_key_check == "off":
        # The instance's own entry has the warning its connector gives on every connect.
        out.append(
            TransportWarning(
                f"{key}.host_key_check",
                "off: the server's host key is not verified, so anyone on the way can pose as the server",
            )
        )
    for i, hop in enumerate(cfg.jump or []):
        out += _ssh(f"{key}.jump[{i}]", name, hop)
    return out + _ssh(key, name, cfg)


def _ssh(key: str, name: str, cfg: SshHostConfig) -> list[TransportWarning]:
    """What weakens one SSH login: the server's or a jump host's."""
    from conveyor.transfer.sftp.algorithms import WEAK
    from conveyor.transfer.sftp.hostkeys import parse_fingerprint

    out = []
    if cfg.legacy_algorithms:
        out.append(
            TransportWarning(
                f"{key}.legacy_algorithms",
                "true: SHA-1 key exchanges and CBC ciphers are offered, which "
                "weaken what protects the connection; ask the server's operator for modern algorithms",
                name,
            )
        )
    lists = cfg.algorithms.model_dump() if cfg.algorithms else {}
    for category, names in lists.items():
        weak = [n for n in names or [] if n in WEAK.get(category, set())]
        if weak:
            out.append(
                TransportWarning(f"{key}.algorithms.{category}", f"weak: {', '.join(weak)} (SHA-1, MD5 or CBC)", name)
            )
    for i, text in enumerate(cfg.host_fingerprint or []):
        if parse_fingerprint(text).hash == "md5":
            where = f"{key}.host_fingerprint" + (f"[{i}]" if len(cfg.host_fingerprint or []) > 1 else "")
            out.append(
                TransportWarning(
                    where,
                    "an MD5 fingerprint: MD5 collisions are cheap; pin the SHA256 form "
                    "(`conveyor fingerprint HOST[:PORT]` prints it)",
                    name,
                )
            )
    return out


def _ftp(key: str, name: str, cfg: FtpConfig) -> list[TransportWarning]:
    out = []
    if cfg.tls == "none" and cfg.password is not None and cfg.password.get_secret_value():
        out.append(
            TransportWarning(
                f"{key}.password",
                "sent in clear text: tls is none (plain FTP), so anyone on "
                "the way can read it and the files; set tls: explicit or implicit",
                name,
            )
        )
    if cfg.tls != "none" and not cfg.tls_verify and cfg.tls_fingerprint is None:
        out.append(
            TransportWarning(
                f"{key}.tls_verify",
                "false: the server's certificate is not checked, so anyone on the way can pose as the server",
            )
        )  # listed by the instance itself
    return out
