"""Config model of the ``http`` target."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from conveyor.config.base import TargetConfig
from conveyor.config.types import Duration, Secret
from conveyor.proxy import PROXY_HELP, ProxyUrl, check_proxy_setting, proxy_of


class HttpTargetConfig(TargetConfig):
    """POST each payload to an HTTP endpoint."""

    type: Literal["http"]
    url: str = Field(description="http:// or https:// endpoint")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers (may hold secrets)")
    timeout: Duration = Field(
        30.0, description="an attempt fails after this long without progress (connect, send, answer)"
    )
    tls_verify: bool = Field(True, description="verify the server certificate")
    ca_file: str | None = Field(None, description="CA bundle to verify the server with")
    proxy: Secret | None = Field(None, description=PROXY_HELP)
    _proxy_parses = field_validator("proxy")(check_proxy_setting)
    content_type: str | None = Field(
        None, description="Content-Type (default: guessed from the payload name, else application/octet-stream)"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.lower().startswith(("http://", "https://")) or len(v.split("://", 1)[1]) == 0:
            raise ValueError("url must start with http:// or https://")
        return v

    @property
    def proxy_url(self) -> ProxyUrl | None:
        """The parsed ``proxy``, or None to connect directly."""
        return proxy_of(self.proxy)
