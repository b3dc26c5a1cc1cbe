"""The sftp instance config: credentials, host-key settings and fingerprints are checked up front."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from conveyor.transfer.sftp.config import SftpConfig

BASE: dict[str, Any] = {
    "type": "sftp",
    "host": "sftp.example",
    "username": "acme",
    "password": "pw",
    "host_fingerprint": "SHA256:" + "A" * 43,
}


def check(**over: Any) -> SftpConfig:
    cfg = {**BASE, **over}
    return SftpConfig.model_validate({k: v for k, v in cfg.items() if v is not None})


def error(**over: Any) -> str:
    with pytest.raises(ValidationError) as ei:
        check(**over)
    return str(ei.value)


def test_defaults_and_describe() -> None:
    c = check()
    assert (c.port, c.root, c.timeout, c.max_connection_attempts, c.max_connections, c.host_key_check) == (
        22,
        "",
        10.0,
        3,
        4,
        "on",
    )  # root "": the folder the login lands in
    assert c.describe() == "acme@sftp.example:22"
    assert c.host_fingerprint == ["SHA256:" + "A" * 43]
    assert "pw" not in repr(c) and c.secrets() == ["pw"]


def test_registered() -> None:
    from conveyor.registry import all_specs

    spec = all_specs()["sftp"]
    assert spec.kind == "file" and spec.factory == "conveyor.transfer.sftp.instance:SftpInstance"
    assert spec.load_factory().__name__ == "SftpInstance"


def test_credentials_key_password_or_both() -> None:
    assert "no credentials" in error(password=None)
    check(private_key_file="/k")  # key and password together: both are offered
    assert "either private_key or private_key_file" in error(
        password=None, private_key="-----BEGIN OPENSSH PRIVATE KEY-----\n", private_key_file="/k"
    )
    assert "no private key to decrypt" in error(passphrase="x")
    assert "key text" in error(password=None, private_key="/etc/key.pem")
    check(password=None, private_key_file="/k", passphrase="x")
    check(password=None, agent="/run/user/1000/ssh-agent.sock")
    assert "agent is empty (is SSH_AUTH_SOCK set?)" in error(password=None, agent="")
    assert "no private key it certifies" in error(certificate_file="/k-cert.pub")
    assert "give one of host_fingerprint / host_ca" in error(host_ca="ssh-ed25519 AAAA")


def test_no_way_to_verify_host_key() -> None:
    msg = error(host_fingerprint=None)
    assert "no way to verify the host key: set host_fingerprint, known_hosts or host_ca (or host_key_check: off)" in msg
    check(host_fingerprint=None, known_hosts="/etc/conveyor/known_hosts")
    assert check(host_fingerprint=None, host_key_check="off").host_key_check == "off"
    assert check(host_fingerprint=None, host_key_check=False).host_key_check == "off"  # YAML `off`


@pytest.mark.parametrize(
    "fp",
    [
        "SHA256:Nq0XkBsd6CEt5c4mzG3xl1tYkMQyOvBs8VZbSNAnUmU",
        "SHA256:Nq0XkBsd6CEt5c4mzG3xl1tYkMQyOvBs8VZbSNAnUmU=",
        "16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
        "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
        "1627aca576282d36631b564debdfa648",
        "md5:1627ACA576282D36631B564DEBDFA648",
        "ab" * 64,
        "SHA512:" + "ab" * 64,
    ],
)
def test_fingerprint_forms_accepted(fp: str) -> None:
    check(host_fingerprint=fp)


@pytest.mark.parametrize(
    "fp",
    [
        "SHA256:short",
        "nonsense",
        "1627aca576",
        "zz" * 16,
        "16:27:ac",
        "ab" * 40,
        "SHA512:" + "ab" * 16,
        "MD5:" + "ab" * 64,
    ],
)
def test_malformed_fingerprint(fp: str) -> None:
    msg = error(host_fingerprint=[("SHA256:" + "A" * 43), fp])
    assert "host_fingerprint" in msg and "SHA256:<base64>" in msg and "MD5" in msg and "SHA512" in msg


def test_limits() -> None:
    assert "timeout" in error(timeout="0s")
    assert "max_connections" in error(max_connections=0)
    assert "unit" in error(timeout=10)
    assert "extra" in error(hostname="x").lower()


def test_unknown_algorithm_names_are_refused_listing_the_valid_ones() -> None:
    msg = error(algorithms={"ciphers": ["aes128-ctr", "rot13"]})
    assert "algorithms.ciphers" in msg and "unknown cipher algorithm rot13" in msg
    assert "valid: chacha20-poly1305@openssh.com" in msg and "aes128-cbc" in msg
    assert "unknown key exchange algorithm dh-nope" in error(algorithms={"kex": ["dh-nope"]})
    assert "algorithms.macs" in error(algorithms={"macs": ["hmac-sha3"]})
    assert "algorithms.host_keys" in error(algorithms={"host_keys": ["ssh-foo"]})
    assert "algorithms.compression" in error(algorithms={"compression": ["lz4"]})
    assert "algorithms.cipher" in error(algorithms={"cipher": ["aes128-ctr"]})  # a misspelt key
    assert "empty list" in error(algorithms={"kex": []})


def test_known_names_load() -> None:
    c = check(algorithms={"kex": ["diffie-hellman-group14-sha1"], "host_keys": ["ssh-rsa"]})
    assert c.algorithms is not None and c.algorithms.kex == ["diffie-hellman-group14-sha1"]
    assert c.algorithms.ciphers is None and c.legacy_algorithms is False
