"""Steps: what a flow does to a payload between its source and its target.

This module holds the config models only (the runtime is :mod:`conveyor.steps`, imported
when a flow has steps). A step is one of a few declared kinds, never code. Each step takes one
payload and gives one (``decompress``, ``compress``, ``decrypt``, ``encrypt``) or several
(``unpack``: one per archive member, ``split``: one per record or batch of records);
``collect`` gathers many messages into one file.
"""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from conveyor.config.types import ConfigModel, Duration, Secret, Size

MAX_MEMBERS = 10_000
MAX_UNPACKED = 16 * 1024**3
MAX_RATIO = 200
RATIO_FLOOR = 64 * 1024**2
"""Below this many unpacked bytes the ratio is not checked: small text compresses far."""


class Limits(ConfigModel):
    """Guards against archive and compression bombs."""

    max_size: Size = Field(MAX_UNPACKED, ge=1, description="most bytes unpacked from one input, all members together")
    max_ratio: float = Field(
        MAX_RATIO,
        gt=1,
        description="most unpacked bytes per byte of input (checked once past 64 MiB unpacked)",
    )


class Decompress(Limits):
    """``decompress``: gzip'd input becomes its plain bytes (``x.csv.gz`` → ``x.csv``)."""

    format: Literal["gzip", "auto"] = Field(
        description="gzip: the input must be gzip; auto: gzip'd input is decompressed, anything else passes as it is"
    )


class Compress(ConfigModel):
    """``compress``: the payload is gzip'd on its way out (``x.csv`` → ``x.csv.gz``)."""

    format: Literal["gzip"] = Field(description="gzip")
    level: int = Field(6, ge=1, le=9, description="1 (fastest) to 9 (smallest)")


class Unpack(Limits):
    """``unpack``: each regular file of an archive becomes a payload of its own."""

    format: Literal["zip", "tar", "tar.gz"] = Field(description="zip, tar or tar.gz")
    max_members: int = Field(MAX_MEMBERS, ge=1, description="most members one archive may hold")


class Decrypt(ConfigModel):
    """``decrypt``: an OpenPGP message becomes its plain bytes (``.pgp``, ``.gpg``, ``.asc`` dropped)."""

    private_key_file: str = Field(description="the private key (armored or binary) the input is encrypted for")
    passphrase: Secret | None = Field(None, description="the private key's passphrase (e.g. ${file:/etc/...})")
    verify_with: tuple[str, ...] = Field(
        (),
        description="public key files: when given, a valid signature by one of them is required",
    )
    max_size: Size = Field(
        MAX_UNPACKED, ge=1, description="most bytes decrypted from one input (OpenPGP messages may be compressed)"
    )


class Encrypt(ConfigModel):
    """``encrypt``: the payload is encrypted for the recipients (``.pgp``, or ``.asc`` when armored)."""

    recipients: tuple[str, ...] = Field(min_length=1, description="public key files of who may decrypt")
    sign_with: str | None = Field(None, description="a private key file to sign with")
    passphrase: Secret | None = Field(None, description="the signing key's passphrase")
    armor: bool = Field(False, description="ASCII armor (.asc) instead of binary (.pgp)")


class Split(ConfigModel):
    """``split``: a file becomes one message per record, or per batch of records."""

    format: Literal["lines", "ndjson", "csv", "json_array"] = Field(
        description="lines: each line a record; ndjson: each line a JSON value; csv: each CSV record "
        "(quoted fields may hold line breaks); json_array: each element of a top-level JSON array"
    )
    batch_size: int = Field(1, ge=1, le=1_000_000, description="records per message")
    header: Literal["keep", "drop", "none"] = Field(
        "keep",
        description="csv only: keep: the first line is a header, repeated at the top of each message; "
        "drop: it is a header, left out; none: there is no header line",
    )


COLLECT_FIELDS = ("batch_start", "count", "id", "flow")
"""What a ``collect`` filename template may use."""


class Collect(ConfigModel):
    """``collect``: messages gathered into one file per batch (broker sources into file targets)."""

    format: Literal["ndjson", "csv", "concat"] = Field(
        description="ndjson: each message one JSON value on a line of its own; csv: each message CSV "
        "records, a line break added where one is missing; concat: the bodies one after another"
    )
    max_messages: int = Field(1000, ge=1, le=100_000, description="messages per file at most")
    max_bytes: Size = Field(
        64 * 1024**2, ge=1, description="bytes per file at most (one bigger message makes a file alone)"
    )
    max_wait: Duration = Field(
        60.0, gt=0, description="a batch not full after this long (from its first message) is written as it is"
    )
    header: str | None = Field(None, description="csv only: a header line written at the top of each file")
    filename: str | None = Field(
        None,
        description="the file's name, a template over {batch_start:FORMAT} (when its first message came), "
        "{count} (messages in it), {id} (the batch's id, at least 8 characters of it required) and {flow}; "
        "default {flow}-{batch_start:%Y%m%dT%H%M%S}-{id:.8} and .ndjson, .csv or .bin",
    )

    @field_validator("filename")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None:
            ids = [spec for _, field, spec in check_collect_name(v) if field == "id"]
            # A batch's file is replaced, not added to, when a later batch gets its name: without
            # enough of the batch's id in it, two batches in the same second would lose the first.
            if not any(len(format("f" * 32, spec).strip()) >= 8 for spec in ids):
                raise ValueError(
                    "two batches could get the same name, and the later file would replace the earlier: "
                    "put at least 8 characters of {id} in it, e.g. orders-{batch_start:%Y%m%d}-{id:.8}.ndjson"
                )
        return v

    @model_validator(mode="after")
    def _header_for_csv(self) -> Collect:
        if self.header is not None and self.format != "csv":
            raise ValueError("header is for format: csv only")
        if self.header is not None and ("\n" in self.header or "\r" in self.header):
            raise ValueError("header is one line, without a line break")
        return self

    @property
    def name_template(self) -> str:
        """The filename template, the default when none is given."""
        ext = {"ndjson": ".ndjson", "csv": ".csv", "concat": ".bin"}[self.format]
        return self.filename or "{flow}-{batch_start:%Y%m%dT%H%M%S}-{id:.8}" + ext


def check_collect_name(text: str) -> list[tuple[str, str, str]]:
    """The (literal, field, spec) parts of a ``collect`` filename; ValueError naming what is wrong."""
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"{e} (write {{{{ and }}}} for a literal brace)") from None
    out = []
    known = " ".join("{" + f + "}" for f in COLLECT_FIELDS)
    for literal, field, spec, conv in pieces:
        if field is None:
            out.append((literal, "", ""))
            continue
        if conv is not None or field not in COLLECT_FIELDS:
            raise ValueError(f"unknown field {{{field}}}; known: {known}")
        spec = spec or ""
        if field == "batch_start":
            spec = spec or "%Y%m%dT%H%M%S"
            if "%" not in spec:
                raise ValueError(f"{{batch_start:{spec}}}: a date format needs strftime codes such as %Y %m %d")
        else:
            try:
                format(1 if field == "count" else "x", spec)
            except ValueError as e:
                raise ValueError(f"{{{field}:{spec}}}: bad format: {e}") from None
        out.append((literal, field, spec))
    if "/" in text or "\\" in text:
        raise ValueError("a file name, without / (the target's path says where it goes)")
    return out


KINDS = ("decompress", "compress", "unpack", "decrypt", "encrypt", "split", "collect")
"""Every step kind, in the order the docs list them."""


class StepConfig(ConfigModel):
    """One step of a flow's ``steps``: exactly one of the keys below."""

    decompress: Decompress | None = Field(None, description="gzip | auto, or {format, max_size, max_ratio}")
    compress: Compress | None = Field(None, description="gzip, or {format, level}")
    unpack: Unpack | None = Field(None, description="zip | tar | tar.gz, or {format, max_members, max_size, max_ratio}")
    decrypt: Decrypt | None = Field(None, description="{private_key_file, passphrase, verify_with}")
    encrypt: Encrypt | None = Field(None, description="{recipients, sign_with, passphrase, armor}")
    split: Split | None = Field(None, description="lines | ndjson | csv | json_array, or {format, batch_size, header}")
    collect: Collect | None = Field(
        None, description="ndjson | csv | concat, or {format, max_messages, max_bytes, max_wait, header, filename}"
    )

    @field_validator("decompress", "compress", "unpack", "split", "collect", mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        # ``unpack: zip`` stands for ``unpack: {format: zip}``
        return {"format": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one(self) -> StepConfig:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} per step (got {len(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        """The step's kind: its one key."""
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def options(self) -> Any:
        """The step's own settings."""
        return getattr(self, self.kind)

    def key_files(self) -> list[tuple[str, str]]:
        """(key path below the step, file) for each key file the step reads."""
        o = self.options
        if isinstance(o, Decrypt):
            named = [("private_key_file", o.private_key_file)]
            named += [(f"verify_with[{i}]", p) for i, p in enumerate(o.verify_with)]
        elif isinstance(o, Encrypt):
            named = [(f"recipients[{i}]", p) for i, p in enumerate(o.recipients)]
            named += [("sign_with", o.sign_with)] if o.sign_with else []
        else:
            named = []
        return [(f"{self.kind}.{k}", p) for k, p in named]

    def secrets(self) -> list[str]:
        """Passphrases, for redaction."""
        p = getattr(self.options, "passphrase", None)
        return [p.get_secret_value()] if p is not None else []
