"""Base config models that connector modules extend: instances, sources and targets."""

from __future__ import annotations

import contextlib
import fnmatch
import re
from datetime import tzinfo
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from conveyor import companions
from conveyor.config.types import AfterAction, ConfigModel, Duration, Glob, MoveAction, Size
from conveyor.globs import reaches_into_folders
from conveyor.names import UnsafeNames, check_template, normal_path


class InstanceConfig(ConfigModel):
    """A named connection to one external system. Subclasses set ``type: Literal[...]``."""

    type: str

    def describe(self) -> str:
        """A loggable address such as ``user@host:port``, never a secret."""
        return self.type

    def file_problems(self) -> list[tuple[str, str]]:
        """Local files this instance needs that cannot be used, as (key, what is wrong) pairs.

        ``conveyor check`` reports them; the daemon meets them at connect, as errors of the instance.
        """
        return []

    def secrets(self) -> list[str]:
        """Every secret value in this instance, so logs can redact them."""
        return [s for s in _nested_secrets(self) if s]


def _nested_secrets(value: object) -> list[str]:
    """Secrets in a model, its sub-models and lists of them (an sftp instance's jump hosts)."""
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _nested_secrets(item)]
    if isinstance(value, ConfigModel):
        return [s for name in type(value).model_fields for s in _nested_secrets(getattr(value, name))]
    return []


class SourceConfig(ConfigModel):
    """What a flow reads from its instance."""

    instance: str = Field(description="name of the instance to read from")


class ChecksumCheck(ConfigModel):
    """A checksum file the partner sends beside each data file, checked after download."""

    file: str | None = Field(
        None,
        description="its name, a template over {name} {stem} {ext} of the data file "
        "(default: '{name}.sha256' or '{name}.md5' after the algorithm)",
    )
    algorithm: companions.Algorithm = Field("sha256", description="sha256 | md5")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        # `checksum: md5` says it all for the usual '{name}.md5'.
        return {"algorithm": v} if isinstance(v, str) else v

    @field_validator("file")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return None if v is None else companions.check_template(v, per_file=True)

    @property
    def template(self) -> str:
        """The checksum file's name template."""
        return self.file or "{name}." + self.algorithm


class FileSourceConfig(SourceConfig):
    """A folder (or one exact file) on a file instance: local, sftp, ftp."""

    path: str = Field(
        "",
        description="folder to list, relative to the instance root ('.', '' and '/' are the root); or one exact file",
    )
    pattern: str | None = Field(None, description="glob on the file name, e.g. '*.csv' (default: every file)")
    regex: str | None = Field(None, description="regular expression on the file name; instead of pattern")
    recursive: bool = Field(
        False,
        description="also list sub-folders (implied by an include that reaches into folders, or max_depth over 0)",
    )
    include: list[Glob] = Field(
        default_factory=list,
        description="globs on the path relative to path: a file is taken only when one matches; anchored at "
        "path, ** is zero or more folders, * stays within one name (e.g. '**/*.csv', 'in/PAY_*')",
    )
    exclude: list[Glob] = Field(
        default_factory=list,
        description="globs like include: a file any of them matches is left alone, whatever include says "
        "(e.g. 'archive/**')",
    )
    min_size: Size | None = Field(None, description="smaller files are left alone (not reported)")
    max_size: Size | None = Field(
        None, description="larger files are left alone (not reported; unlike max_file_size, which refuses them)"
    )
    max_age: Duration | None = Field(
        None, description="files whose mtime is further back than this are left alone (longer than min_age)"
    )
    max_depth: int | None = Field(
        None,
        ge=0,
        description="folders below path to list: 0 is path alone, 1 adds its sub-folders (deeper ones are "
        "not listed at all)",
    )
    order: Literal["oldest", "newest", "name", "size"] | None = Field(
        None,
        description="order of the files taken in one poll, before max_files_per_poll: oldest | newest (by "
        "mtime) | name (relative path) | size (smallest first); default: as listed",
    )
    poll_interval: Duration = Field(30.0, description="time between listings")
    schedule: str | None = Field(
        None,
        description="list at these times instead of every poll_interval: a cron expression "
        "('*/5 8-18 * * MON-FRI'; 6 fields put seconds first) on the clocks of the flow's timezone (default UTC)",
    )
    min_age: Duration = Field(
        10.0, description="a file must keep the same size and mtime for this long before it is taken"
    )
    after: AfterAction = Field("keep", description="delete | keep (remembered in the state store) | {move: dir}")
    on_failure: MoveAction | None = Field(
        None, description="move a file whose delivery failed for good; default: leave it, remembered as failed"
    )
    max_files_per_poll: int = Field(10_000, ge=1, description="at most this many files are taken per listing")
    max_file_size: Size | None = Field(
        64 * 1024**3,
        description="a larger file (as listed, or as read) is refused, never fetched again while it "
        "stays that size (null: no limit)",
    )
    max_listing_entries: int = Field(
        100_000,
        ge=1,
        description="files read from one listing; the rest of a longer one waits (bounds memory "
        "against a server that lists without end)",
    )
    done_file: str | None = Field(
        None,
        description="take a file only once its done file is there, no older than it: '{name}.done', "
        "'{stem}.ok' (one per file; fields {name} {stem} {ext}) or a fixed name such as 'batch.ready' "
        "(one per folder: releases the files of its folder not newer than itself). Done files are "
        "never payloads; each gets its files' after action, after them",
    )
    checksum: ChecksumCheck | None = Field(
        None,
        description="a checksum file beside each data file, checked after download: "
        "{file: '{name}.sha256', algorithm: sha256 | md5}, or just 'sha256' / 'md5'. A file waits "
        "for its checksum file; a mismatch is fetched again, then fails the file (left in place)",
    )

    @field_validator("path")
    @classmethod
    def _normal_path(cls, v: str) -> str:
        # One spelling per folder: file ids hash the listed path, which starts with this one.
        return normal_path(v)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from conveyor.clock import cron_fields  # croniter only for configs that have a schedule

            cron_fields(v)
            v = v.strip()
        return v

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _one_matcher(self) -> FileSourceConfig:
        if self.pattern is not None and self.regex is not None:
            raise ValueError("give either pattern or regex, not both")
        return self

    @model_validator(mode="before")
    @classmethod
    def _implied_recursion(cls, data: Any) -> Any:
        # An include such as '**/*.csv' or a max_depth over 0 says sub-folders are wanted: list them
        # unless recursive is set (an explicit false is a contradiction the loader reports by key).
        if isinstance(data, dict):
            # One glob is often written without the list around it.
            data = {**data, **{k: [data[k]] for k in ("include", "exclude") if isinstance(data.get(k), str)}}
            if "recursive" not in data and _wants_folders(data):
                return {**data, "recursive": True}
        return data

    def reaching_into_folders(self) -> list[tuple[tuple[str | int, ...], str]]:
        """The settings that need sub-folders listed, as (key path, what it is)."""
        out: list[tuple[tuple[str | int, ...], str]] = [
            (("include", i), f"'{p}' matches files in sub-folders")
            for i, p in enumerate(self.include)
            if reaches_into_folders(p)
        ]
        if self.max_depth:
            out.append((("max_depth",), f"{self.max_depth} lists sub-folders"))
        return out

    @field_validator("done_file")
    @classmethod
    def _done_template(cls, v: str | None) -> str | None:
        return None if v is None else companions.check_template(v)

    def matches(self, name: str) -> bool:
        """Whether a file name is one this source takes."""
        if self.regex is not None:
            return re.search(self.regex, name) is not None
        return not self.pattern or fnmatch.fnmatchcase(name, self.pattern)


def _wants_folders(data: dict[str, Any]) -> bool:
    """Whether raw source settings reach into sub-folders (invalid values are reported elsewhere)."""
    depth = data.get("max_depth")
    if isinstance(depth, int) and not isinstance(depth, bool) and depth > 0:
        return True
    include = data.get("include")
    for p in include if isinstance(include, list) else ():
        with contextlib.suppress(ValueError, TypeError):
            if isinstance(p, str) and reaches_into_folders(p):
                return True
    return False


class MessageSourceConfig(SourceConfig):
    """A queue or subscription on a broker instance."""

    max_attempts: int = Field(5, ge=1, description="deliveries of one message before it is rejected (dead-lettered)")

    when_keys: ClassVar[tuple[str, ...]] = ()
    """The ``when:`` keys on message metadata this source's messages carry (``attr``, ``header``)."""


def written_done_file(v: str | None) -> str | None:
    """Check a file target's ``done_file`` (a field validator both file targets use)."""
    return None if v is None else companions.check_template(v, per_file=True)


DONE_FILE_WRITTEN = (
    "after each file is in place, write this empty marker beside it (temp name, then rename): a "
    "template over {name} {stem} {ext} of the delivered file's name, e.g. '{name}.done'"
)
CHECKSUM_WRITTEN = (
    "sha256 | md5: write '<name>.sha256' (or .md5) beside each delivered file, in sha256sum format, "
    "once the file is in place (before the done file)"
)


class TargetConfig(ConfigModel):
    """A flow target of a registered target type (``type: NAME``, no instance).
    Subclasses set ``type: Literal[...]``."""

    type: str


FILENAME_FIELDS = (
    "template over {name} {stem} {ext} {id} {flow} {path} {received:%Y%m%d} {mtime:%Y%m%d} {attr.KEY} {header.KEY}"
)
FOLDER_FIELDS = "; a template over the same fields as filename ({path} keeps the source's subfolders)"
PRESERVE_MTIME = "give the delivered file the source file's modification time"


class NamedFiles(ConfigModel):
    """A target that names its files from ``filename`` and ``path`` templates: what they share."""

    _timezone: tzinfo | None = PrivateAttr(None)

    @field_validator("filename", check_fields=False)
    @classmethod
    def _filename_template(cls, v: str) -> str:
        check_template(v)
        return v

    @field_validator("path", check_fields=False)
    @classmethod
    def _path_template(cls, v: str) -> str:
        check_template(v, folder=True)
        return v

    def set_timezone(self, tz: str | None) -> None:
        """The flow's ``timezone``, which dates in the templates are written in (default UTC).
        Set once by the config loader: the target's own keys do not hold it."""
        self._timezone = ZoneInfo(tz) if tz else None

    @property
    def timezone(self) -> tzinfo | None:
        """The zone dates are written in; None is UTC."""
        return self._timezone


class FileTargetConfig(NamedFiles):
    """Upload to a file instance (local, sftp, ftp): temp name, then rename."""

    instance: str = Field(description="name of the instance to upload to")
    path: str = Field("", description="folder relative to the instance root" + FOLDER_FIELDS)
    filename: str = Field("{name}", description=FILENAME_FIELDS)
    preserve_mtime: bool = Field(
        False, description=PRESERVE_MTIME + " (FTP: where the server offers MFMT; else a warning, once)"
    )
    exists: Literal["replace", "fail", "skip"] = Field("replace", description="when the file is already there")
    chmod: str | None = Field(None, pattern=r"^0?[0-7]{3,4}$", description="octal mode for the uploaded file")
    unsafe_names: UnsafeNames = Field(
        "rename",
        description="names with a leading dot, a Windows device name (CON, NUL, COM1), a trailing dot "
        'or <>:"|?*: rename (_ in their place) | keep | refuse (the payload fails)',
    )
    timeout: Duration | None = Field(None, description="a delivery taking longer counts as stuck")
    done_file: str | None = Field(None, description=DONE_FILE_WRITTEN)
    checksum: companions.Algorithm | None = Field(None, description=CHECKSUM_WRITTEN)

    @field_validator("done_file")
    @classmethod
    def _done_file(cls, v: str | None) -> str | None:
        return written_done_file(v)


class MessageTargetConfig(ConfigModel):
    """Publish to a broker instance."""

    instance: str = Field(description="name of the instance to publish to")
    timeout: Duration | None = Field(None, description="a delivery taking longer counts as stuck")
