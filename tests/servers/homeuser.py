"""A system user with a real home folder, for servers that do not chroot: the login lands there.

The sshd and vsftpd fixtures log in as users whose home is ``/`` or missing, so a login lands
in the server's ``/``. ``conveyor-home`` has ``/home/conveyor-home``, emptied for each test, so
tests can tell "relative to the login folder" from "relative to ``/``". The home stays at one
path: ``usermod`` refuses to move it while a session of the user from an earlier test lingers.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOME_USER = "conveyor-home"
HOME_PASSWORD = "home-Secret-7"
HOME = Path("/home") / HOME_USER


@dataclass
class HomeUser:
    """The login user and its home folder (owned by it)."""

    name: str
    password: str
    home: Path
    uid: int
    gid: int

    def put(self, rel: str, data: bytes) -> Path:
        """A file under the home folder, with its folders, owned by the user."""
        p = self.home / rel
        for d in reversed(p.parents):
            if d.is_relative_to(self.home) and not d.exists():
                d.mkdir()
                os.chown(d, self.uid, self.gid)
        p.write_bytes(data)
        os.chown(p, self.uid, self.gid)
        return p

    def mkdir(self, rel: str) -> Path:
        """A folder under the home folder, owned by the user."""
        p = self.home / rel
        p.mkdir(parents=True, exist_ok=True)
        os.chown(p, self.uid, self.gid)
        return p


def make_home_user() -> HomeUser:
    """Create ``conveyor-home`` if missing, with :data:`HOME` empty and its password set."""
    try:
        pw = pwd.getpwnam(HOME_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--shell", "/bin/sh", "--no-create-home", "--home-dir", str(HOME), HOME_USER],
            check=True,
            capture_output=True,
        )
        pw = pwd.getpwnam(HOME_USER)
    if pw.pw_dir != str(HOME):
        subprocess.run(["usermod", "--home", str(HOME), HOME_USER], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{HOME_USER}:{HOME_PASSWORD}\n", text=True, check=True, capture_output=True)
    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir(mode=0o755, parents=True)
    os.chown(HOME, pw.pw_uid, pw.pw_gid)
    return HomeUser(HOME_USER, HOME_PASSWORD, HOME, pw.pw_uid, pw.pw_gid)


@pytest.fixture
def home_user() -> Iterator[HomeUser]:
    """``conveyor-home`` with an empty home folder, removed after the test."""
    if os.geteuid() != 0:
        pytest.skip("a login user with a home folder needs root (useradd)")
    try:
        yield make_home_user()
    finally:
        shutil.rmtree(HOME, ignore_errors=True)
