"""Config model of the ``directory`` target."""

from __future__ import annotations

import grp
from typing import Any, Literal

from pydantic import Field, field_validator

from conveyor import companions
from conveyor.config.base import (
    CHECKSUM_WRITTEN,
    DONE_FILE_WRITTEN,
    FILENAME_FIELDS,
    FOLDER_FIELDS,
    PRESERVE_MTIME,
    NamedFiles,
    TargetConfig,
    written_done_file,
)
from conveyor.config.types import Duration
from conveyor.names import SIDECAR_SUFFIX, UnsafeNames


class DirectoryTargetConfig(TargetConfig, NamedFiles):
    """Write each payload into a local folder, with a ``.meta.json`` sidecar."""

    type: Literal["directory"]
    path: str = Field(description="folder to write into (created if missing)" + FOLDER_FIELDS)
    filename: str = Field("{id}", description=FILENAME_FIELDS)
    preserve_mtime: bool = Field(False, description=PRESERVE_MTIME)
    sidecar: bool = Field(True, description="write <name>.meta.json beside each body")
    exists: Literal["replace", "fail", "skip"] = Field(
        "replace",
        description="when the name holds a file that is not this payload's: replace it | fail the "
        "payload | skip (counts as delivered only when the file there has the same bytes; else fails)",
    )
    unsafe_names: UnsafeNames = Field(
        "rename",
        description="names with a leading dot, a Windows device name (CON, NUL, COM1), a trailing dot "
        'or <>:"|?*: rename (_ in their place) | keep | refuse (the payload fails)',
    )
    file_mode: str = Field("0640", description="octal mode of delivered files and sidecars, whatever the umask")
    group: str | None = Field(
        None,
        description="group (name or number) given to delivered files and sidecars "
        "(default: the folder's, for a setgid folder, or conveyor's)",
    )
    fsync: bool = Field(True, description="fsync bodies and the folder before reporting delivery")
    timeout: Duration | None = Field(None, description="a delivery taking longer counts as stuck")
    done_file: str | None = Field(None, description=DONE_FILE_WRITTEN)
    checksum: companions.Algorithm | None = Field(None, description=CHECKSUM_WRITTEN)

    @field_validator("done_file")
    @classmethod
    def _done_file(cls, v: str | None) -> str | None:
        if v is not None and v.endswith(SIDECAR_SUFFIX):
            raise ValueError(f"{v!r} would take the name of a metadata sidecar")
        return written_done_file(v)

    @field_validator("file_mode", mode="before")
    @classmethod
    def _octal_mode(cls, v: Any) -> Any:
        # YAML reads 0640 as the number 416 and 640 as 640: only a quoted string says what was meant.
        if not isinstance(v, str):
            raise ValueError(f'write the mode as a quoted octal string, e.g. "0640" (got {v!r})')
        digits = v.removeprefix("0o") if v.startswith("0o") else v
        if not (len(digits) in (3, 4) and all(c in "01234567" for c in digits) and int(digits, 8) <= 0o777):
            raise ValueError(
                f'{v!r} is not a file mode: three octal digits, e.g. "0640" (no setuid, setgid or sticky bits)'
            )
        return f"{int(digits, 8):04o}"

    @field_validator("group", mode="before")
    @classmethod
    def _known_group(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError("expected a group name or number")
        text = str(v).strip()
        if text.isdigit():
            return text
        try:
            grp.getgrnam(text)
        except KeyError:
            raise ValueError(f"no group named {text!r} on this machine") from None
        return text

    def mode(self) -> int:
        """``file_mode`` as a number."""
        return int(self.file_mode, 8)

    def gid(self) -> int | None:
        """The group id to give delivered files, or None to leave the group as created."""
        if self.group is None:
            return None
        if self.group.isdigit():
            return int(self.group)
        return grp.getgrnam(self.group).gr_gid
