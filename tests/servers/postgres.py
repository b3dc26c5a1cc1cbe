"""The real PostgreSQL server on 127.0.0.1:5432 (trust auth, user postgres), a fresh database per test.

``ensure_postgres()`` starts Debian's cluster (``pg_ctlcluster <version> main start``) when nothing
answers, as ``.ci/run`` does on a new machine. Each ``pg_url`` is a new database
``conveyor_test_<random>``, dropped (with its connections) afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator

import pytest

HOST = "127.0.0.1"
PORT = int(os.environ.get("CONVEYOR_TEST_PG_PORT", "5432"))
USER = os.environ.get("CONVEYOR_TEST_PG_USER", "postgres")


def pg_up(timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on the PostgreSQL port."""
    try:
        with socket.create_connection((HOST, PORT), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_postgres(wait: float = 60.0) -> None:
    """Start the local cluster when nothing answers, and wait until it accepts connections."""
    if pg_up():
        return
    if shutil.which("pg_ctlcluster"):
        for conf in sorted(glob.glob("/etc/postgresql/*/main")):
            version = conf.split("/")[3]
            subprocess.run(["pg_ctlcluster", version, "main", "start"], check=False, capture_output=True, timeout=60)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if pg_up():
            return
        time.sleep(0.5)
    pytest.fail(
        f"PostgreSQL is not running on {HOST}:{PORT} (apt-get install -y postgresql; "
        "pg_ctlcluster 15 main start; trust auth for 127.0.0.1 in pg_hba.conf)"
    )


def admin_url(db: str = "postgres") -> str:
    """A URL for the server's maintenance database."""
    return f"postgresql://{USER}@{HOST}:{PORT}/{db}"


async def create_database() -> str:
    """A fresh empty database; returns its URL."""
    import asyncpg

    ensure_postgres()
    name = f"conveyor_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_url(name)


async def drop_database(url: str) -> None:
    """Drop a database made by :func:`create_database`, cutting its connections."""
    import asyncpg

    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    conn = await asyncpg.connect(admin_url())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh database on the real server for one test (dropped afterwards)."""
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)
