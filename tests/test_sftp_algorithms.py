"""SSH algorithm settings of an sftp instance: a server that speaks only
what OpenSSH deprecated years ago (SHA-1 key exchange, ssh-rsa, CBC) refused by default with a
message naming the setting, and reached with ``legacy_algorithms: true``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import Permanent
from conveyor.transfer.sftp.config import SftpConfig
from conveyor.transfer.sftp.hostkeys import fingerprint_main, sha256_fp
from conveyor.transfer.sftp.pool import SftpPool
from tests.backends.sftp import ssh_client_keys, sshd  # noqa: F401  (the fixtures)
from tests.harness import write_config
from tests.servers.ssh_keys import KeySet
from tests.servers.sshd import Sshd, own_sshd
from tests.test_check_connect import check
from tests.test_transport_warnings import run_until_delivered, warning_lines


@pytest.fixture
def legacy_sshd(ssh_client_keys: KeySet) -> Iterator[Sshd]:  # noqa: F811
    """An OpenSSH sshd with nothing newer than SHA-1 key exchange, ssh-rsa signatures and aes128-cbc."""
    yield from own_sshd(
        ssh_client_keys,
        ("rsa",),
        ("KexAlgorithms diffie-hellman-group14-sha1", "HostKeyAlgorithms ssh-rsa", "Ciphers aes128-cbc"),
    )


def legacy_instance(server: Sshd, **over: Any) -> dict[str, Any]:
    return server.instance_config(host_fingerprint=sha256_fp(server.host_blob("rsa")), **over)


def delivered(tmp_path: Path) -> list[bytes]:
    """The contents that reached the directory target (without their .meta.json)."""
    return [p.read_bytes() for p in sorted((tmp_path / "o").iterdir()) if not p.name.endswith(".meta.json")]


async def test_refused_by_default_naming_legacy_algorithms(tmp_path: Path, legacy_sshd: Sshd) -> None:
    legacy_sshd.put("in/a.csv", b"a")
    cfg = write_config(
        tmp_path,
        {"old": legacy_instance(legacy_sshd)},
        {"f": {"source": {"instance": "old", "path": "in"}, "target": {"type": "directory", "path": str(tmp_path)}}},
    )
    code, lines = await check(cfg)
    text = "\n".join(lines)
    assert code != 0, text
    assert (
        "no common cipher: the server offers aes128-cbc; set legacy_algorithms: true or algorithms.ciphers" in text
    ), text


async def test_legacy_algorithms_reach_the_server_with_a_warning(tmp_path: Path, legacy_sshd: Sshd) -> None:
    legacy_sshd.put("in/a.csv", b"old server")
    d, doc = await run_until_delivered(tmp_path, legacy_instance(legacy_sshd, legacy_algorithms=True), "in")
    assert delivered(tmp_path) == [b"old server"]
    lines = warning_lines(d)
    assert any(line.startswith("weak transport: instances.sftp.legacy_algorithms: true") for line in lines), lines
    assert any(w.startswith("instances.sftp.legacy_algorithms: true") for w in doc["warnings"]), doc["warnings"]
    assert doc["instances"]["sftp"]["state"] == "up"


async def test_an_explicit_cipher_list_reaches_the_server(tmp_path: Path, legacy_sshd: Sshd) -> None:
    legacy_sshd.put("in/b.csv", b"b")
    instance = legacy_instance(
        legacy_sshd, algorithms={"kex": ["diffie-hellman-group14-sha1"], "ciphers": ["aes128-cbc", "aes128-ctr"]}
    )
    _, doc = await run_until_delivered(tmp_path, instance, "in")
    assert delivered(tmp_path) == [b"b"]
    assert any(w.startswith("instances.sftp.algorithms.ciphers: weak: aes128-cbc") for w in doc["warnings"])


def test_fingerprint_shows_what_the_server_offers(legacy_sshd: Sshd, capsys: pytest.CaptureFixture[str]) -> None:
    assert fingerprint_main(f"127.0.0.1:{legacy_sshd.port}") == 0
    out = capsys.readouterr().out
    assert f'host_fingerprint: "{sha256_fp(legacy_sshd.host_blob("rsa"))}"' in out
    assert "#   kex: diffie-hellman-group14-sha1" in out and "#   ciphers: aes128-cbc\n" in out
    assert "#   host_keys: ssh-rsa\n" in out and "#   macs: " in out


@pytest.mark.parametrize(
    ("lists", "expected"),
    [
        (
            {"kex": ["diffie-hellman-group1-sha1"]},
            "no common key exchange: the server offers sntrup761x25519-sha512, ",
        ),
        ({"host_keys": ["ssh-dss"]}, "no common host key: the server offers "),
        # An AEAD cipher (GCM, chacha20) carries its own MAC: only a CTR cipher negotiates one.
        ({"ciphers": ["aes128-ctr"], "macs": ["hmac-md5"]}, "no common MAC: the server offers umac-64-etm@openssh.com"),
    ],
)
async def test_nothing_in_common_names_the_server_list_and_the_key(
    sshd: Sshd,  # noqa: F811
    lists: dict[str, list[str]],
    expected: str,
) -> None:
    pool = SftpPool("modern", SftpConfig.model_validate(sshd.instance_config(algorithms=lists)), None)
    with pytest.raises(Permanent) as ei:
        await pool.connect()
    msg = str(ei.value)
    key = list(lists)[-1]
    assert expected in msg and f"; set algorithms.{key} to include one of " in msg, msg
    assert "legacy_algorithms" not in msg and "kex-strict" not in msg, msg
