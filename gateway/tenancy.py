"""Tenants: who may call the gateway, with which keys, under which policy, budgets and rate limits.

Keys are configured only as SHA-256 hashes, so neither the config file nor a memory dump holds one.
A presented key is hashed, looked up by its hash, and the stored hash compared with `hmac.compare_digest`
(constant time). With no tenants configured, auth is off: every caller is the anonymous, unrestricted
tenant, and the gateway says so loudly at start-up.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from routing.context import TenantPolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimits(_Strict):
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute (sliding window).")
    tpm: int | None = Field(default=None, ge=1, description="Tokens (prompt + completion) per minute.")


class Budgets(_Strict):
    daily_usd: float | None = Field(default=None, ge=0, description="UTC day.")
    monthly_usd: float | None = Field(default=None, ge=0, description="UTC calendar month.")
    soft_ratio: float = Field(default=0.8, gt=0, le=1, description="Past this share: a warning and a metric.")


class KeyConfig(_Strict):
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the key; the key itself is never stored."
    )
    name: str = Field(default="default", description="Shown in usage records and limits, never the key.")
    rate_limits: RateLimits | None = None


class TeamConfig(_Strict):
    budgets: Budgets | None = None


class PolicyConfig(_Strict):
    allowed_regions: list[str] | None = None
    allowed_providers: list[str] | None = None
    required_tags: list[str] = Field(default_factory=list)
    allow_route_header: bool = False


class TenantConfig(_Strict):
    keys: list[KeyConfig] = Field(min_length=1)
    allowed_models: list[str] | None = Field(default=None, description="Public model names; unset: all.")
    policy: PolicyConfig = PolicyConfig()
    budgets: Budgets | None = None
    teams: dict[str, TeamConfig] = Field(default_factory=dict)
    rate_limits: RateLimits | None = None
    on_redis_failure: Literal["open", "closed"] = Field(
        default="open", description="Redis unreachable: admit (open) or refuse (closed) this tenant's calls."
    )


class TagSettings(_Strict):
    metric_keys: list[str] = Field(
        default_factory=lambda: ["team", "feature"],
        description="Tag keys allowed as metric labels (bounded cardinality); all tags reach the ledger.",
    )
    max_tags: int = Field(default=16, ge=0, le=64)

    @field_validator("metric_keys")
    @classmethod
    def _names(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not key.isidentifier():
                raise ValueError(f"tag key {key!r} must be a plain name (letters, digits, underscores)")
        return keys


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated sender of a request. Built once per key (see `KeyIndex`), so what is derived from
    the tenant's config (its routing policy, whether any limit applies) is worked out once, not per request."""

    tenant: str | None  # None: auth is off (no tenants configured)
    key_name: str | None
    config: TenantConfig | None
    policy: TenantPolicy = field(init=False)
    limited: bool = field(init=False)  # any budget or rate limit applies (else admission checks nothing)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", _policy(self.config))
        object.__setattr__(self, "limited", _limited(self.config, self.key_name))

    def may_use(self, model: str) -> bool:
        allowed = self.config.allowed_models if self.config is not None else None
        return allowed is None or model in allowed


def _policy(tenant: TenantConfig | None) -> TenantPolicy:
    if tenant is None:
        return TenantPolicy()
    policy = tenant.policy
    return TenantPolicy(
        allowed_regions=frozenset(policy.allowed_regions) if policy.allowed_regions is not None else None,
        allowed_providers=frozenset(policy.allowed_providers) if policy.allowed_providers is not None else None,
        required_tags=frozenset(policy.required_tags),
        allow_route_header=policy.allow_route_header,
    )


def _limited(tenant: TenantConfig | None, key_name: str | None) -> bool:
    if tenant is None:
        return False
    key_limits = any(key.rate_limits is not None for key in tenant.keys if key.name == key_name)
    team_budgets = any(team.budgets is not None for team in tenant.teams.values())
    return tenant.budgets is not None or tenant.rate_limits is not None or key_limits or team_budgets


ANONYMOUS = Caller(tenant=None, key_name=None, config=None)


class KeyIndex:
    """Tenant keys by hash. Built once per config; `find` is one hash, one dict lookup, one digest compare."""

    def __init__(self, tenants: dict[str, TenantConfig]) -> None:
        self._by_hash: dict[str, tuple[str, Caller]] = {}
        for name, tenant in tenants.items():
            for key in tenant.keys:
                self._by_hash[key.sha256] = (key.sha256, Caller(tenant=name, key_name=key.name, config=tenant))

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    def find(self, presented: str) -> Caller | None:
        digest = hashlib.sha256(presented.encode()).hexdigest()
        entry = self._by_hash.get(digest)  # keyed by a hash of the secret: its timing says nothing of any key
        if entry is None or not hmac.compare_digest(digest, entry[0]):
            return None
        return entry[1]


def presented_key(authorization: str | None, api_key_header: str | None) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (the OpenAI SDKs) or `api-key` (Azure-style)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return api_key_header.strip() if api_key_header else None


def parse_tags(
    header: str | None, metadata: object, limit: int, single: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """Tags from `x-gateway-tags: team=growth,feature=search`, the older one-tag headers (`single`, e.g.
    {"team": <x-gateway-team>}) and the OpenAI `metadata` object; headers win over metadata, and
    `x-gateway-tags` over the one-tag headers. At most `limit` tags, keys and values trimmed and bounded."""
    tags: dict[str, str] = {}
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if isinstance(key, str) and isinstance(value, str):
                tags[key.strip()[:64]] = value.strip()[:128]
    for key, value in (single or {}).items():
        if value:
            tags[key] = value.strip()[:128]
    for part in (header or "").split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            tags[key.strip()[:64]] = value.strip()[:128]
    return dict(list(tags.items())[:limit])
