"""Request bodies of the Gateway paths ember serves (from fireworks-gateway.openapi.yml), proto3 JSON.

Read-only fields (name, createTime, state, …) are accepted and ignored, as the real Gateway does when a
client sends back an object it read; unknown fields are refused.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class UserBody(Wire):
    role: str | None = None
    email: str | None = Field(default=None, max_length=320)
    displayName: str | None = Field(default=None, max_length=63)
    serviceAccount: bool | None = None
    permissionPreset: str | None = None
    name: str | None = None
    createTime: str | None = None
    updateTime: str | None = None
    state: str | None = None
    status: dict | None = None


class ApiKeyFields(Wire):
    displayName: str | None = Field(default=None, max_length=63)
    expireTime: str | None = None
    annotations: dict[str, str] | None = None
    keyId: str | None = None
    key: str | None = None
    createTime: str | None = None
    secure: bool | None = None
    email: str | None = None
    prefix: str | None = None
    lastUsed: str | None = None


class CreateApiKeyBody(Wire):
    apiKey: ApiKeyFields


class DeleteApiKeyBody(Wire):
    keyId: str = Field(min_length=1, max_length=64)


class QuotaBody(Wire):
    value: int | str | None = None
    maxValue: int | str | None = None
    name: str | None = None
    usage: float | None = None
    updateTime: str | None = None
