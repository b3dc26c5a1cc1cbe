"""Done files and checksum files, through ``conveyor run`` on real servers.

Source side, on a local folder, OpenSSH sshd and vsftpd: a file waits for its done file (one
that comes later, one older than the file), a fixed-name done file releases its folder, a
checksum file is checked (a match is delivered, a mismatch fails and stays put), and every
companion gets its files' after action. Target side: the directory target and an upload to
an instance write a checksum file and a done file beside each file, and a crash after the
data is in place but before the done file still ends with the done file written.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import DaemonProcess, bodies, wait_for, write_config
from tests.test_behaviour import file_flow

REMOTE = ["local_backend", "sftp_openssh_backend", "ftps_explicit_vsftpd_backend"]

# Whole minutes apart: an FTP listing without MLSD gives mtimes to the minute.
EARLY = time.time() - 3 * 3600
LATER = EARLY + 600
A1 = b"a,1\n"
MTIME_2026 = 1_780_000_000  # 2026-05-28 UTC


@pytest.fixture(params=REMOTE)
def fb(request: pytest.FixtureRequest) -> Any:
    """Each source backend in turn."""
    return request.getfixturevalue(request.param)


def flow(out: Path, **source: Any) -> dict[str, Any]:
    """The shared suite's file flow, delivering under the files' own names."""
    f = file_flow(out, **source)
    f["target"]["filename"] = "{name}"
    return f


def states(state_db: Path, flow: str) -> dict[str, tuple[str, str | None]]:
    """The ledger's items of a flow: file name -> (state, last error)."""
    if not state_db.exists():
        return {}
    with sqlite3.connect(state_db) as db:
        try:
            rows = db.execute("SELECT name, state, last_error FROM items WHERE flow=?", (flow,)).fetchall()
        except sqlite3.OperationalError:
            return {}  # the daemon has not made its tables yet
    return {name: (state, error) for name, state, error in rows}


async def test_a_file_waits_for_its_done_file(fb: Any, tmp_path: Path) -> None:
    """``{name}.done``: a file is taken once its marker comes, and not for a marker older than
    itself (one left from an earlier file of that name); markers are never payloads and are
    deleted after their files."""
    fb.put("in/ready.csv", b"ready", mtime=EARLY)
    fb.put("in/ready.csv.done", b"", mtime=LATER)  # sees the folder was listed
    fb.put("in/late.csv", b"late", mtime=EARLY)
    fb.put("in/stale.csv", b"stale", mtime=LATER)
    fb.put("in/stale.csv.done", b"", mtime=EARLY)
    out = tmp_path / "out"
    cfg = write_config(tmp_path, {"remote": fb.instance_config()}, {"f": flow(out, done_file="{name}.done")})
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: "ready.csv" in bodies(out) and not fb.exists("in/ready.csv.done"), 60)
        assert sorted(bodies(out)) == ["ready.csv"], "taken without its done file"
        assert fb.exists("in/late.csv") and fb.exists("in/stale.csv")
        fb.put("in/late.csv.done", b"", mtime=LATER)
        fb.put("in/stale.csv.done", b"", mtime=LATER + 600)  # the partner's new marker for it
        await wait_for(lambda: len(bodies(out)) == 3 and fb.names("in") == [], 60)
    finally:
        d.stop()
    assert bodies(out) == {"ready.csv": b"ready", "late.csv": b"late", "stale.csv": b"stale"}


async def test_a_folder_done_file_releases_its_folder(fb: Any, tmp_path: Path) -> None:
    """``ready.flag``: releases the files of its own folder not newer than itself, then is
    moved after them; a folder without one waits, and a newer file waits for the next."""
    fb.put("in/x/x1.csv", b"x1", mtime=EARLY)
    fb.put("in/x/x2.csv", b"x2", mtime=EARLY + 60)
    fb.put("in/x/ready.flag", b"", mtime=LATER)
    fb.put("in/x/next.csv", b"next", mtime=LATER + 600)  # the next batch, already arriving
    fb.put("in/y/y1.csv", b"y1", mtime=EARLY)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"remote": fb.instance_config()},
        {"f": flow(out, done_file="ready.flag", recursive=True, after={"move": "archive"})},
    )
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: fb.names("in/x") == ["next.csv"], 60)
        assert sorted(bodies(out)) == ["x1.csv", "x2.csv"]
        assert fb.names("in/y") == ["y1.csv"]
        fb.put("in/y/ready.flag", b"", mtime=LATER)
        await wait_for(lambda: fb.names("in/y") == [], 60)
        assert sorted(bodies(out)) == ["x1.csv", "x2.csv", "y1.csv"]
        fb.put("in/x/ready.flag", b"", mtime=LATER + 1200)
        await wait_for(lambda: fb.names("in/x") == [], 60)
    finally:
        d.stop()
    assert sorted(bodies(out)) == ["next.csv", "x1.csv", "x2.csv", "y1.csv"]
    assert fb.names("archive/x") == ["next.csv", "ready.flag", "x1.csv", "x2.csv"]
    assert fb.names("archive/y") == ["ready.flag", "y1.csv"]


async def test_checksum_files_are_checked(fb: Any, tmp_path: Path) -> None:
    """A matching checksum (``HEX  NAME`` in upper case, or bare hex for md5) is delivered, and
    its checksum file deleted after it; a mismatch is fetched again, then fails with a clear
    message, the file and its checksum file left where they are. A file without its checksum
    file waits for it."""
    good, bad, md5 = b"good,1\n" * 100, b"bad,2\n" * 100, b"md5,3\n" * 50
    fb.put("in/good.csv", good)
    fb.put("in/good.csv.sha256", f"{hashlib.sha256(good).hexdigest().upper()}  good.csv\n".encode())
    fb.put("in/bad.csv", bad)
    fb.put("in/bad.csv.sha256", f"{hashlib.sha256(b'other').hexdigest()}  bad.csv\n".encode())
    fb.put("in/waits.csv", b"waits")
    fb.put("md/m.bin", md5)
    fb.put("md/m.bin.md5", hashlib.md5(md5).hexdigest().encode())
    out, out5 = tmp_path / "out", tmp_path / "out5"
    cfg = write_config(
        tmp_path,
        {"remote": fb.instance_config()},
        {"f": flow(out, checksum="sha256"), "m": flow(out5, path="md", checksum={"algorithm": "md5"})},
    )
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: states(tmp_path / "state.db", "f").get("bad.csv", ("",))[0] == "failed", 60)
        await wait_for(lambda: fb.names("md") == [] and not fb.exists("in/good.csv.sha256"), 60)
    finally:
        d.stop()
    assert bodies(out) == {"good.csv": good}
    assert bodies(out5) == {"m.bin": md5}
    assert fb.names("in") == ["bad.csv", "bad.csv.sha256", "waits.csv"]
    error = states(tmp_path / "state.db", "f")["bad.csv"][1] or ""
    assert "the sha256 of in/bad.csv is " + hashlib.sha256(bad).hexdigest() in error
    assert "in/bad.csv.sha256 says " + hashlib.sha256(b"other").hexdigest() in error
    assert "after 3 downloads" in error and "left in place" in error
    logged = [r for r in d.logs() if r.get("level") == "error"]
    assert len(logged) == 1 and "in/bad.csv" in logged[0]["msg"], logged
    assert "waits.csv" not in states(tmp_path / "state.db", "f")


def target_flow(target: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": {"instance": "src", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete"},
        "target": target,
        "retry": {"attempts": 1000, "backoff": "100ms", "max_backoff": "200ms"},
    }


FILES = {f"r{i}.csv": f"row,{i}\n".encode() * (i + 1) for i in range(3)}


async def deliver_files(tmp_path: Path, instances: dict[str, Any], target: dict[str, Any], done: Any) -> None:
    """FILES from a local folder to ``target`` through ``conveyor run``, until ``done()``."""
    disk = tmp_path / "disk"
    (disk / "in").mkdir(parents=True)
    for name, data in FILES.items():
        (disk / "in" / name).write_bytes(data)
        os.utime(disk / "in" / name, (MTIME_2026, MTIME_2026))
    cfg = write_config(tmp_path, {"src": {"type": "local", "root": str(disk)}, **instances}, {"f": target_flow(target)})
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(done, 60)
    finally:
        d.stop()


async def test_the_directory_target_writes_checksum_and_done_files(tmp_path: Path) -> None:
    """A checksum file (sha256sum format) and an empty done file beside each body, in the
    folder its ``path`` template gives it."""
    out = tmp_path / "out" / "2026"
    target = {"type": "directory", "path": str(tmp_path / "out" / "{mtime:%Y}"), "filename": "{name}", "sidecar": False}
    target.update(done_file="{name}.done", checksum="sha256")
    await deliver_files(tmp_path, {}, target, lambda: len(list(out.glob("*.done"))) == len(FILES))
    assert sorted(p.name for p in out.iterdir()) == sorted(n + x for n in FILES for x in ("", ".done", ".sha256"))
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data
        assert (out / f"{name}.sha256").read_text() == f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        assert (out / f"{name}.done").read_bytes() == b""


@pytest.mark.parametrize("server", ["sftp_openssh_backend", "ftps_explicit_vsftpd_backend"])
async def test_uploads_write_checksum_and_done_files(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An upload to an SFTP or FTPS server: an md5 file and a ``{stem}.ok`` beside each file."""
    fb = request.getfixturevalue(server)
    target = {"instance": "dst", "path": "drop", "done_file": "{stem}.ok", "checksum": "md5"}
    done = lambda: len([n for n in fb.names("drop") if n.endswith(".ok")]) == len(FILES)  # noqa: E731
    await deliver_files(tmp_path, {"dst": fb.instance_config()}, target, done)
    for name, data in FILES.items():
        stem = name.removesuffix(".csv")
        assert fb.read(f"drop/{name}") == data
        assert fb.read(f"drop/{name}.md5") == f"{hashlib.md5(data).hexdigest()}  {name}\n".encode()
        assert fb.read(f"drop/{stem}.ok") == b""
    assert len(fb.names("drop")) == 3 * len(FILES), "no temporary names left behind"


@pytest.mark.parametrize("kind", ["directory", "local", "sftp"])
async def test_a_crash_before_the_done_file_still_writes_it(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The data is in place but its done file cannot be written yet (a folder stands at its
    name); the daemon is killed while retrying, the obstacle removed, and after a restart the
    done file and checksum file are written and the item delivered."""
    disk = tmp_path / "disk"
    (disk / "in").mkdir(parents=True)
    (disk / "in" / "a.csv").write_bytes(A1)
    target: dict[str, Any] = {"instance": "dst", "path": ""}
    if kind == "sftp":
        sftp = request.getfixturevalue("sftp_openssh_backend")
        out, dst = sftp.folder, sftp.instance_config()
        sftp.mkdir("a.csv.done")  # in the way of the done file
    else:
        out = tmp_path / "out"
        (out / "a.csv.done").mkdir(parents=True)
        dst = {"type": "local", "root": str(out)}
        if kind == "directory":
            target = {"type": "directory", "path": str(out), "filename": "{name}"}
    target.update(done_file="{name}.done", checksum="sha256")
    cfg = write_config(tmp_path, {"src": {"type": "local", "root": str(disk)}, "dst": dst}, {"f": target_flow(target)})
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: any("attempt 2 of" in str(r.get("msg")) for r in d.logs()), 60)
        assert (out / "a.csv").read_bytes() == A1
        assert (out / "a.csv.sha256").is_file(), "the checksum file comes before the done file"
    finally:
        d.kill9()
    (out / "a.csv.done").rmdir()
    (out / "a.csv.sha256").unlink()
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: (out / "a.csv.done").is_file() and not (disk / "in" / "a.csv").exists(), 60)
    finally:
        d.stop()
    assert (out / "a.csv").read_bytes() == A1
    assert (out / "a.csv.sha256").read_text() == f"{hashlib.sha256(A1).hexdigest()}  a.csv\n"
    assert states(tmp_path / "state.db", "f")["a.csv"][0] == "delivered"


async def test_one_exact_file_with_its_done_and_checksum_files(local_backend: Any, tmp_path: Path) -> None:
    """A source whose path names one file looks up its done file and checksum file beside it,
    and deletes them after it."""
    fb = local_backend
    fb.put("in/a.csv", A1, mtime=EARLY)
    fb.put("in/a.csv.sha256", f"{hashlib.sha256(A1).hexdigest()}  a.csv\n".encode())
    fb.put("in/a.csv.done", b"", mtime=LATER)
    fb.put("in/other.csv", b"not this one")
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"remote": fb.instance_config()},
        {"f": flow(out, path="in/a.csv", done_file="{name}.done", checksum="sha256")},
    )
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: fb.names("in") == ["other.csv"], 60)
    finally:
        d.stop()
    assert bodies(out) == {"a.csv": A1}


async def test_selection_with_done_and_checksum_files(fb: Any, tmp_path: Path) -> None:
    """The bank's drop: ``PAY_*.csv`` with ``.sha256`` files and a folder ``ready.flag``, taken by
    ``include`` (which names neither companion): the companions are still seen and settled."""
    pay = {f"PAY_{i}.csv": f"pay,{i}\n".encode() for i in range(3)}
    for name, data in pay.items():
        fb.put(f"in/{name}", data, mtime=EARLY)
        fb.put(f"in/{name}.sha256", f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode(), mtime=EARLY)
    fb.put("in/OTHER.csv", b"not ours", mtime=EARLY)
    out = tmp_path / "out"
    source = {"include": ["PAY_*.csv"], "done_file": "ready.flag", "checksum": "sha256"}
    cfg = write_config(tmp_path, {"remote": fb.instance_config()}, {"f": flow(out, **source)})
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: fb.exists("in/PAY_0.csv"), 10)
        assert bodies(out) == {}  # no ready.flag yet
        fb.put("in/ready.flag", b"", mtime=LATER)
        await wait_for(lambda: len(bodies(out)) == 3 and fb.names("in") == ["OTHER.csv"], 60)
    finally:
        d.stop()
    assert bodies(out) == pay
