"""Target names through ``conveyor run`` on real servers: subfolders kept through ``{path}`` from a
recursive source, dates written in the flow's timezone, ``{header.KEY}`` and ``{attr.KEY}`` from
RabbitMQ and Pub/Sub messages, ``preserve_mtime`` on directory, local, SFTP (OpenSSH) and FTP
(pyftpdlib has MFMT; vsftpd does not, and conveyor warns once), unsafe rendered names under
``unsafe_names``, and template mistakes as config errors naming their key."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conveyor.daemon import Daemon
from tests.backends.ftp import FtpBackend
from tests.backends.local import LocalBackend
from tests.backends.pubsub import PubsubBackend, pubsub_backend, pubsub_emulator
from tests.backends.sftp import SftpBackend, sftp_openssh_backend, sshd
from tests.harness import DaemonProcess, bodies, running, wait_for, write_config
from tests.servers.rabbitmq import Vhost, declare, publish
from tests.servers.rabbitmq import rabbit_vhost_fixture as rabbit_vhost_fixture
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory

__all__ = ["pubsub_backend", "pubsub_emulator", "sftp_openssh_backend", "sshd", "vsftpd_certs", "vsftpd_factory"]

Remote = LocalBackend | SftpBackend | FtpBackend

MTIME = datetime(2026, 3, 1, 20, 0, 5, tzinfo=UTC).timestamp()
"""A source file's time: already 2 March in Tokyo (UTC+9, no daylight saving)."""


@pytest.fixture
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    """A file server as a flow's source or target: the test's ``on(...)`` picks which."""
    kind = request.param
    if kind == "local":
        return LocalBackend(tmp_path / "remote")
    if kind == "sftp-openssh":
        backend: SftpBackend = request.getfixturevalue("sftp_openssh_backend")
        return backend
    if kind == "ftp-vsftpd":
        return FtpBackend(kind, request.getfixturevalue("vsftpd_factory")("none"))
    return FtpBackend(kind, request.getfixturevalue("pyftpd_factory")("none"))


def on(*kinds: str) -> pytest.MarkDecorator:
    """The servers (local, sftp-openssh, ftp-vsftpd, ftp-pyftpdlib) ``remote`` is for a test."""
    return pytest.mark.parametrize("remote", kinds, indirect=True)


def files_under(folder: Path) -> dict[str, bytes]:
    """Every delivered body below ``folder`` by its relative path (sidecars left out)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.endswith(".meta.json")
    }


async def run_until(cfg: Path, done: Any, limit: float = 60) -> DaemonProcess:
    """``conveyor run`` as a process until ``done()``; stopped with SIGTERM, exit code 0 asserted."""
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: d.proc is not None and (d.proc.poll() is not None or done()), limit)
        assert d.proc is not None and d.proc.poll() is None, f"the daemon exited:\n{d.text()[-3000:]}"
    finally:
        d.stop()
    return d


def failed_count(d: Daemon, flow: str) -> int:
    """Failed items of a flow so far (0 before the flow has started)."""
    st = d.status.flows.get(flow)
    return st.failed if st is not None else 0


def file_source(**over: Any) -> dict[str, Any]:
    return {"instance": "remote", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete", **over}


@on("local", "sftp-openssh", "ftp-vsftpd")
async def test_subfolders_kept_through_path(remote: Remote, tmp_path: Path) -> None:
    """A recursive source's folders are the target's: ``archive/{path}`` puts a file at the top in
    ``archive`` itself (no stray '/'), and ``{stem}{ext}`` is the name."""
    files = {"in/top.csv": b"top", "in/eu/b.csv": b"b", "in/eu/fr/a.csv": b"a", "in/us/README": b"r"}
    for p, data in files.items():
        remote.put(p, data)
    out = tmp_path / "out"
    target = {"type": "directory", "path": f"{out}/archive/{{path}}", "filename": "{stem}{ext}", "sidecar": False}
    cfg = write_config(
        tmp_path,
        {"remote": remote.instance_config()},
        {"f": {"source": file_source(recursive=True), "target": target}},
    )
    await run_until(cfg, lambda: len(files_under(out)) == 4)
    assert files_under(out) == {
        "archive/top.csv": b"top",
        "archive/eu/b.csv": b"b",
        "archive/eu/fr/a.csv": b"a",
        "archive/us/README": b"r",
    }
    assert not remote.exists("in/eu/fr/a.csv")


@on("local", "sftp-openssh", "ftp-pyftpdlib")
async def test_upload_keeps_folders_dates_and_mtime(remote: Remote, tmp_path: Path) -> None:
    """A file target on a server: folders from ``{path}`` and from a date in the flow's timezone,
    and the source's modification time kept (SFTP setstat, FTP MFMT, utime locally)."""
    src = LocalBackend(tmp_path / "src")
    src.put("in/PAY_1.csv", b"one", mtime=MTIME)
    src.put("in/eu/PAY_2.csv", b"two", mtime=MTIME + 60)
    target = {
        "instance": "remote",
        "path": "archive/{mtime:%Y/%m/%d}/{path}",
        "filename": "{stem}-{mtime:%H%M}{ext}",
        "preserve_mtime": True,
    }
    flows = {
        "f": {"source": {**file_source(recursive=True), "instance": "src"}, "target": target, "timezone": "Asia/Tokyo"}
    }
    cfg = write_config(tmp_path, {"src": src.instance_config(), "remote": remote.instance_config()}, flows)
    want = {
        "archive/2026/03/02/PAY_1-0500.csv": (b"one", MTIME),
        "archive/2026/03/02/eu/PAY_2-0501.csv": (b"two", MTIME + 60),
    }
    await run_until(cfg, lambda: all(remote.exists(p) for p in want))
    root = remote.folder if isinstance(remote, SftpBackend | FtpBackend) else remote.root
    for p, (data, mtime) in want.items():
        assert remote.read(p) == data
        assert (root / p).stat().st_mtime == mtime, p
    assert not [n for n in remote.names("archive/2026/03/02") if n.startswith(".")], "no temp file left"


@on("ftp-vsftpd")
async def test_preserve_mtime_without_mfmt_warns_once(remote: Remote, tmp_path: Path) -> None:
    """vsftpd lists no MFMT in FEAT: the files are delivered with the upload's time, and the
    daemon says so once, not per file."""
    src = LocalBackend(tmp_path / "src")
    for i in range(3):
        src.put(f"in/f{i}.csv", b"x", mtime=MTIME)
    target = {"instance": "remote", "path": "out", "preserve_mtime": True}
    cfg = write_config(
        tmp_path,
        {"src": src.instance_config(), "remote": remote.instance_config()},
        {"f": {"source": {**file_source(), "instance": "src"}, "target": target}},
    )
    d = await run_until(cfg, lambda: len(remote.names("out")) == 3)
    assert isinstance(remote, FtpBackend)
    assert all((remote.folder / "out" / n).stat().st_mtime != MTIME for n in remote.names("out"))
    said = [r for r in d.logs() if "does not offer MFMT" in r.get("msg", r.get("message", ""))]
    assert len(said) == 1, d.text()[-3000:]
    assert said[0]["level"] in ("warning", "WARNING")


@on("local", "sftp-openssh")
async def test_dates_in_the_flows_timezone_and_mtime_on_a_directory(remote: Remote, tmp_path: Path) -> None:
    """``{mtime}`` and ``{received}`` written in the flow's timezone; a directory target with
    ``preserve_mtime`` gives the file its source's time."""
    remote.put("in/a.csv", b"a", mtime=MTIME)
    out = tmp_path / "out"
    target = {
        "type": "directory",
        "path": f"{out}/{{mtime:%Y-%m-%d}}",
        "filename": "{received:%Y}-{flow}-{name}",
        "preserve_mtime": True,
    }
    flows = {"daily": {"source": file_source(), "target": target, "timezone": "Asia/Tokyo"}}
    cfg = write_config(tmp_path, {"remote": remote.instance_config()}, flows)
    years = {datetime.now(ZoneInfo("Asia/Tokyo")).year}
    await run_until(cfg, lambda: files_under(out))
    years.add(datetime.now(ZoneInfo("Asia/Tokyo")).year)
    got = files_under(out)
    assert list(got) in [[f"2026-03-02/{y}-daily-a.csv"] for y in years], got
    body = next(p for p in (out / "2026-03-02").iterdir() if not p.name.endswith(".meta.json"))
    assert body.stat().st_mtime == MTIME


async def test_header_fields_name_rabbitmq_messages(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """``{header.KEY}`` in path and filename; a message without the header is a failed item that
    says which header is missing, and the others still go through."""
    v = rabbit_vhost
    q = v.q("named")
    await declare(v, q)
    await publish(v, q, [b"order"], message_id="m1", headers={"region": "eu", "kind": "order"})
    await publish(v, q, [b"refund"], message_id="m2", headers={"region": "us", "kind": "refund"})
    await publish(v, q, [b"?"], message_id="m3", headers={"kind": "lost"})
    out = tmp_path / "out"
    target = {"type": "directory", "path": f"{out}/{{header.region}}", "filename": "{header.kind}-{id}"}
    flows = {"d": {"source": {"instance": "mq", "queue": q, "max_attempts": 1}, "target": target}}
    cfg = write_config(tmp_path, {"mq": v.instance_config()}, flows)
    async with running(cfg) as d:
        await wait_for(lambda: len(files_under(out)) == 2 and failed_count(d, "d") == 1, 30)
        failed = await d.store.list("d", "failed")
    assert files_under(out) == {"eu/order-m1": b"order", "us/refund-m2": b"refund"}
    assert [i.id for i in failed] == ["m3"]
    assert (
        failed[0].last_error is not None
        and "{header.region}: the message has no header 'region'" in failed[0].last_error
    )


async def test_attr_fields_name_pubsub_messages(pubsub_backend: PubsubBackend, tmp_path: Path) -> None:
    """``{attr.KEY}`` from a Pub/Sub message's attributes, into a directory target."""
    out = tmp_path / "out"
    target = {"type": "directory", "path": str(out), "filename": "{attr.partner}-{attr.batch}.csv"}
    flows = {"p": {"source": {"instance": "gcp", **pubsub_backend.source_config()}, "target": target}}
    cfg = write_config(tmp_path, {"gcp": pubsub_backend.instance_config()}, flows)

    def send() -> None:
        pub = pubsub_backend._publisher
        pub.publish(pubsub_backend.topic_path, b"rows", partner="acme", batch="7").result(timeout=60)

    async with running(cfg):
        await asyncio.to_thread(send)
        await wait_for(lambda: bodies(out), 60)
    assert bodies(out) == {"acme-7.csv": b"rows"}


@on("local", "sftp-openssh")
async def test_unsafe_rendered_names_follow_unsafe_names(remote: Remote, tmp_path: Path) -> None:
    """What a template renders is checked as a name is: under ``refuse`` a Windows device name
    fails its item; under ``rename`` a device-named folder from ``{path}`` becomes ``aux_``."""
    remote.put("in/CON.txt", b"con")
    remote.put("in/ok.txt", b"ok")
    remote.put("in/aux/z.txt", b"z")
    strict, lenient = tmp_path / "strict", tmp_path / "lenient"
    flows = {
        "strict": {
            "source": file_source(pattern="*.txt", after="keep"),
            "target": {"type": "directory", "path": str(strict), "filename": "{stem}{ext}", "unsafe_names": "refuse"},
            "retry": {"attempts": 1},
        },
        "lenient": {
            "source": file_source(recursive=True, after="keep"),
            "target": {"type": "directory", "path": f"{lenient}/{{path}}", "filename": "{name}", "sidecar": False},
        },
    }
    cfg = write_config(tmp_path, {"remote": remote.instance_config()}, flows)
    async with running(cfg) as d:
        await wait_for(lambda: failed_count(d, "strict") == 1 and len(files_under(lenient)) == 3, 30)
        failed = await d.store.list("strict", "failed")
    assert bodies(strict) == {"ok.txt": b"ok"}
    assert (
        failed[0].last_error is not None and "is a Windows device name (unsafe_names: refuse)" in failed[0].last_error
    )
    assert files_under(lenient) == {"CON_.txt": b"con", "ok.txt": b"ok", "aux_/z.txt": b"z"}


def conveyor_check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )


def test_template_mistakes_are_config_errors_with_their_key(tmp_path: Path) -> None:
    """``conveyor check`` names the key of each mistake; the daemon would not start with them."""
    (tmp_path / "in").mkdir()
    local = {"type": "local", "root": str(tmp_path)}
    mq = {"type": "rabbitmq", "host": "127.0.0.1", "username": "guest", "password": "guest"}
    src = {"instance": "disk", "path": "in"}
    flows = {
        "a": {"source": src, "target": {"type": "directory", "path": "/srv/out", "filename": "{foo}.csv"}},
        "b": {"source": src, "target": {"instance": "disk", "path": "out/{received:Y}"}},
        "c": {"source": src, "target": {"type": "directory", "path": "/srv/{path}/../x"}},
        "d": {"source": src, "target": {"type": "directory", "path": "/srv", "filename": "{attr.k}"}},
        "e": {"source": {"instance": "mq", "queue": "q"}, "target": {"type": "directory", "path": "/srv/{mtime:%Y}"}},
        "f": {"source": src, "target": {"instance": "disk", "path": "out"}, "timezone": "Mars/Olympus"},
    }
    cfg = write_config(tmp_path, {"disk": local, "mq": mq}, flows)
    r = conveyor_check(cfg)
    assert r.returncode != 0
    err = re.sub(r" \(line \d+\)", "", r.stderr)
    assert "flows.a.target.filename: unknown field {foo}; known: {path} {name} {stem} {ext} {id} {flow}" in err
    assert "flows.b.target.path: {received:Y}: a date format needs strftime codes" in err
    assert "flows.c.target.path: '/srv/{path}/../x': '..' would leave the target folder" in err
    assert "flows.d.target.filename: {attr.KEY} needs a pubsub source; this flow reads from local" in err
    assert "flows.e.target.path: {mtime} needs a file source; this flow reads from rabbitmq" in err
    assert "flows.f.timezone: unknown time zone 'Mars/Olympus'" in err
    assert "Traceback" not in err


def test_a_good_template_passes_check(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    target = {"type": "directory", "path": f"{tmp_path}/out/{{received:%Y/%m/%d}}/{{path}}", "filename": "{stem}{ext}"}
    flows = {"f": {"source": {"instance": "disk", "path": "in"}, "target": target, "timezone": "Europe/London"}}
    cfg = write_config(tmp_path, {"disk": {"type": "local", "root": str(tmp_path)}}, flows)
    r = conveyor_check(cfg)
    assert r.returncode == 0, r.stderr
