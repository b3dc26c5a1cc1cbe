"""Names below a trusted folder, reached one component at a time without following a symlink.

The local instance's root is the admin's choice; what lies below it belongs to whoever can write
there. A path resolved by name follows a symlink planted (or swapped in for a folder) after a
listing, so a read, delete or move could reach a file outside the root. Here every operation
starts from a descriptor of the root, opens each folder below it with ``O_NOFOLLOW|O_DIRECTORY``
and acts on the last name relative to its parent's descriptor (the ``*at`` system calls, which
never follow a last component when told not to, and unlink and rename never do).

The functions block: the local instance calls them on its I/O thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence

_PATH = getattr(os, "O_PATH", 0)
"""Linux: a folder on the way needs search permission only, as with a path resolved by name."""
_WALK = (_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""O_NONBLOCK: a FIFO swapped in after the check must not hang the open; a regular file ignores it."""

Identity = tuple[int, int]
"""(st_dev, st_ino): which file a listing saw, whatever its name holds later."""
Version = tuple[int, int, int, float]
"""(st_dev, st_ino, st_size, st_mtime): that file as the listing saw it. An inode freed by a
delete is soon given to the next new file, so a name's identity alone cannot tell a new upload
from the file that was delivered; its size and mtime (which a file's id hashes) tell most."""


class Refused(Exception):
    """A name below the root that is not what the operation needs: a symlink, a FIFO, a device,
    a file where a folder must be. Never followed, opened or read."""


class Replaced(Exception):
    """The name no longer holds the file the listing showed (another file took its place)."""


def parts(rel: str) -> list[str]:
    """The components of a '/'-separated path below the root ('' and '.' dropped); '..' is refused
    by the caller before this runs."""
    return [p for p in rel.split("/") if p and p != "."]


def kind(mode: int) -> str:
    """What a non-regular entry is, for messages."""
    if stat.S_ISLNK(mode):
        return "a symbolic link (links below the instance root are not followed)"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO, not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    return "not a regular file"


def open_root(root: str) -> int:
    """A descriptor of the root itself (symlinks in the admin's path are followed, once per call)."""
    return os.open(root, (_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)


def open_folder(root: str, names: Sequence[str], *, create: bool = False, readable: bool = False) -> int:
    """A descriptor of the folder ``root/names...``, no component followed if it is a symlink.

    ``create`` makes missing folders on the way; ``readable`` opens the last one for listing or
    fsync (else it only serves as the base of ``*at`` calls). Raises Refused when a component is
    a symlink or not a folder, FileNotFoundError when one is missing.
    """
    fd = open_root(root) if names or not readable else os.open(root, _READ_DIR & ~os.O_NOFOLLOW)
    try:
        for i, name in enumerate(names):
            flags = _READ_DIR if readable and i == len(names) - 1 else _WALK
            try:
                nxt = _open_at(fd, name, flags, names[: i + 1])
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
                nxt = _open_at(fd, name, flags, names[: i + 1])
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_at(fd: int, name: str, flags: int, shown: Sequence[str]) -> int:
    try:
        return os.open(name, flags, dir_fd=fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise Refused(_not_a_folder(fd, name, shown)) from None


def _not_a_folder(fd: int, name: str, shown: Sequence[str]) -> str:
    where = "/".join(shown)
    try:
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
    except OSError:
        return f"'{where}' is not a folder"
    return f"'{where}' is a file, not a folder" if stat.S_ISREG(mode) else f"'{where}' is {kind(mode)}"


@contextlib.contextmanager
def parent_of(root: str, rel: str, *, create: bool = False, readable: bool = False) -> Iterator[tuple[int, str]]:
    """The descriptor of ``rel``'s folder and its last name, closed on exit (``create`` and
    ``readable`` as for :func:`open_folder`)."""
    names = parts(rel)
    if not names:
        raise IsADirectoryError(errno.EISDIR, "the instance root itself", root)
    fd = open_folder(root, names[:-1], create=create, readable=readable)
    try:
        yield fd, names[-1]
    finally:
        os.close(fd)


def lstat_at(fd: int, name: str) -> os.stat_result:
    """The entry itself, a symlink not followed."""
    return os.stat(name, dir_fd=fd, follow_symlinks=False)


def open_file(root: str, rel: str, expect: Identity | None) -> tuple[int, os.stat_result]:
    """An open descriptor of the regular file ``rel`` and its fstat.

    The entry is checked before it is opened (so a device is never opened at all) and the
    descriptor after (a swap between the two is caught): a regular file, and when ``expect`` is
    given, the very file the listing saw. Raises Refused or Replaced otherwise.
    """
    with parent_of(root, rel) as (parent, name):
        before = lstat_at(parent, name)
        _check(before, expect, rel)
        try:
            fd = os.open(name, _READ_FILE, dir_fd=parent)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise Refused(f"'{rel}' is {kind(stat.S_IFLNK)}") from None
    try:
        st = os.fstat(fd)
        _check(st, (before.st_dev, before.st_ino), rel)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _check(st: os.stat_result, expect: Identity | None, rel: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"'{rel}' is {kind(st.st_mode)}")
    if expect is not None and (st.st_dev, st.st_ino) != expect:
        raise Replaced(f"'{rel}' was replaced by another file since it was listed")


def unlink(root: str, rel: str, expect: Version | None) -> bool:
    """Delete the entry ``rel`` (a symlink there is removed itself, never what it points to).

    With ``expect``, only while it still is that file in that version: False (nothing deleted)
    when the name now holds another file, another version or anything else. Already gone is
    fine (True).
    """
    try:
        with parent_of(root, rel) as (parent, name):
            if expect is not None and _same(parent, name, expect) is False:
                return False
            os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    return True


def rename(root: str, src: str, dst: str, expect: Version | None) -> bool:
    """Move ``src`` to ``dst`` (replacing it), creating ``dst``'s folders; both below the root,
    nothing on either side followed. With ``expect``, only while ``src`` still is that file in
    that version: False (nothing moved) otherwise."""
    with parent_of(root, src) as (sparent, sname):
        if expect is not None and not _same(sparent, sname, expect):
            return False  # replaced, or gone
        dnames = parts(dst)
        if not dnames:
            raise IsADirectoryError(errno.EISDIR, "the instance root itself", root)
        dparent = open_folder(root, dnames[:-1], create=True, readable=True)
        try:
            os.replace(sname, dnames[-1], src_dir_fd=sparent, dst_dir_fd=dparent)
            os.fsync(dparent)
        finally:
            os.close(dparent)
    return True


def _same(parent: int, name: str, expect: Version) -> bool | None:
    """Whether ``name`` still is the file and version ``expect`` names; None when there is nothing there."""
    try:
        st = lstat_at(parent, name)
    except FileNotFoundError:
        return None
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino, st.st_size, st.st_mtime) == expect
