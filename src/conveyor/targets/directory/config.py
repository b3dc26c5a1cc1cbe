"""Config models of the built-in targets that are not instances: directory and http."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from conveyor.config.types import ConfigModel, Duration


class DirectoryTargetConfig(ConfigModel):
    """Write each payload into a local folder, with a ``.meta.json`` sidecar."""

    type: Literal["directory"]
    path: str = Field(description="folder to write into (created if missing)")
    filename: str = Field("{id}", description="template over {id} {name} {flow} {stem} {ext}")
    sidecar: bool = Field(True, description="write <name>.meta.json beside each body")
    exists: Literal["replace", "fail", "skip"] = Field(
        "replace", description="when a *different* payload already wrote this name (same id always replaces)"
    )
    fsync: bool = Field(True, description="fsync bodies and the folder before reporting delivery")
    timeout: Duration | None = Field(None, description="a delivery taking longer counts as stuck")


class HttpTargetConfig(ConfigModel):
    """POST each payload to an HTTP endpoint."""

    type: Literal["http"]
    url: str = Field(description="http:// or https:// endpoint")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers (may hold secrets)")
    timeout: Duration = Field(
        30.0, description="an attempt fails after this long without progress (connect, send, answer)")
    tls_verify: bool = Field(True, description="verify the server certificate")
    ca_file: str | None = Field(None, description="CA bundle to verify the server with")
    content_type: str | None = Field(
        None, description="Content-Type (default: guessed from the payload name, else application/octet-stream)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.lower().startswith(("http://", "https://")) or len(v.split("://", 1)[1]) == 0:
            raise ValueError("url must start with http:// or https://")
        return v
