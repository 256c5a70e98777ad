"""The gateway's configuration: YAML → validated pydantic models, with errors a person can act on.

Every problem is reported as `key.path[i].name: what is wrong at file:line`, all of them at once, so an
operator fixes a file in one pass. Unknown keys are errors (a typo must not silently fall back to a
default), and names that refer to other sections (a deployment's `provider`) are checked too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from gateway.locations import PathPart, data_path, format_path
from gateway.tenancy import TagSettings, TenantConfig
from gateway.yaml_source import YamlDocument, YamlSyntaxError, load_yaml
from providers.registry import ADAPTERS, ProviderConfig
from routing.config import DEFAULT_TIMEOUTS, ModelAliasConfig, Resilience, RouteRule, Timeouts

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
BUNDLED_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "gateway.yaml"
CONFIG_ENV_VAR = "LLM_GATEWAY_CONFIG"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HTTPClientSettings(_Strict):
    max_connections: int = Field(
        default=1000, ge=1, description="Upstream connections per process, idle keep-alive ones included."
    )
    keepalive_expiry_s: float = Field(default=30.0, gt=0)
    proxy: SecretStr | None = Field(
        default=None, description="Outbound HTTP proxy for every upstream call; HTTPS_PROXY is not read."
    )


class ServerSettings(_Strict):
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    http_client: HTTPClientSettings = HTTPClientSettings()
    watch_config: bool = Field(default=True, description="Reload when the config file changes (SIGHUP always works).")
    resilience: Resilience = Resilience()
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="After SIGTERM, how long in-flight requests (streams included) may run before they are cut.",
    )
    keep_alive_s: float = Field(
        default=75.0,
        gt=0,
        description=(
            "How long an idle client connection stays open. Keep it longer than the idle timeout of every "
            "client and load balancer in front (OpenAI SDKs 5 s, AWS ALB 60 s), so that they close idle "
            "connections, not we: a server closing one just as a client reuses it resets that request."
        ),
    )


class StateSettings(_Strict):
    redis_url: SecretStr | None = Field(
        default=None, description="Shared state for many replicas; /readyz checks it answers."
    )


class AdminSettings(_Strict):
    api_key_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the key for /admin endpoints; unset disables them.",
    )


class LedgerSettings(_Strict):
    """Where one usage record per request goes: SQLite (embedded default) or PostgreSQL."""

    url: SecretStr = Field(
        default=SecretStr("sqlite:///data/ledger.sqlite3"),
        description="sqlite:///relative/path, sqlite:////absolute/path, or postgresql://user:pass@host:5432/db.",
    )
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Records per write.")
    flush_interval_s: float = Field(default=1.0, gt=0, le=60, description="Longest a record waits to be written.")
    queue_size: int = Field(default=100_000, ge=100, description="Records held in memory; beyond, they spill to disk.")
    spill_path: str = Field(
        default="data/ledger-spill.jsonl",
        description="Append-only file for records the store could not take; replayed when it is back.",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: SecretStr) -> SecretStr:
        if not url.get_secret_value().startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")  # the URL may hold a password
        return url


class GatewayConfig(_Strict):
    server: ServerSettings = ServerSettings()
    state: StateSettings = StateSettings()
    admin: AdminSettings = AdminSettings()
    ledger: LedgerSettings = LedgerSettings()
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict, description="Callers and their keys; none: auth is off (every caller is anonymous)."
    )
    tags: TagSettings = TagSettings()
    providers: dict[str, ProviderConfig] = Field(min_length=1)
    models: dict[str, ModelAliasConfig] = Field(min_length=1)
    routes: list[RouteRule] = Field(default_factory=list, description="First matching rule picks the alias.")

    def model_post_init(self, _context: Any) -> None:
        self.server.timeouts = self.server.timeouts.over(DEFAULT_TIMEOUTS)


@dataclass
class ConfigIssue:
    path: str
    message: str
    location: str  # "file:line"

    def __str__(self) -> str:
        return f"{self.path}: {self.message} at {self.location}"


class ConfigError(ValueError):
    """The file cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(issue) for issue in issues))
        self.issues = issues


@dataclass
class LoadedConfig:
    config: GatewayConfig
    source: str
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        config = self.config
        deployments = sum(len(model.deployments) for model in config.models.values())
        providers = ", ".join(f"{name} ({provider.type})" for name, provider in config.providers.items())
        return (
            f"{self.source}: OK: {len(config.models)} models, {deployments} deployments, "
            f"{len(config.providers)} providers: {providers}"
        )


def resolve_config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """--config, else $LLM_GATEWAY_CONFIG, else ./config/gateway.yaml, else the bundled default."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV_VAR):
        return Path(environ[CONFIG_ENV_VAR])
    if DEFAULT_CONFIG_PATH.is_file():
        return DEFAULT_CONFIG_PATH
    return BUNDLED_CONFIG_PATH


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("(file)", f"cannot read config: {exc.strerror}", str(path))]) from None
    except UnicodeDecodeError as exc:
        message = f"the file is not UTF-8 text (byte {exc.start} cannot be decoded)"
        raise ConfigError([ConfigIssue("(file)", message, str(path))]) from None
    return parse_config(text, str(path), environ)


def parse_config(text: str, source: str, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    try:
        document = load_yaml(text, source, environ)
    except YamlSyntaxError as exc:
        raise ConfigError([ConfigIssue("(file)", str(exc).rsplit(" at ", 1)[0], _where(source, exc.line))]) from None
    issues = [ConfigIssue(_path_text(i.path), i.message, _where(source, i.line)) for i in document.issues]
    if not isinstance(document.data, dict):
        issues.append(ConfigIssue("(top level)", "the config must be a mapping of sections", _where(source, 1)))
        raise ConfigError(issues)
    try:
        config = GatewayConfig.model_validate(document.data)
    except ValidationError as exc:
        issues.extend(_validation_issues(exc, document))
    issues.extend(_reference_issues(document))
    if issues:
        raise ConfigError(sorted(issues, key=_line_order))
    return LoadedConfig(config=config, source=source)


def _line_order(issue: ConfigIssue) -> int:
    line = issue.location.rsplit(":", 1)[-1]
    return int(line) if line.isdigit() else 0


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line else source


def _validation_issues(exc: ValidationError, document: YamlDocument) -> list[ConfigIssue]:
    issues = []
    for error in exc.errors(include_url=False):
        path = data_path(error["loc"], document.data, missing=error["type"] == "missing")
        message = _describe(error)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = (*path, "type")
        issues.append(ConfigIssue(_path_text(path), message, _where(document.filename, document.line_of(path))))
    return issues


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "union_tag_invalid":
        context = error.get("ctx") or {}
        known = str(context.get("expected_tags", "")).replace("'", "")
        return f"unknown provider type {context.get('tag')!r} (known: {known})"
    if kind == "union_tag_not_found":
        return "a `type` is required (known: " + ", ".join(sorted(ADAPTERS)) + ")"
    message = str(error["msg"]).removeprefix("Value error, ")  # our own validators' words, as written
    message = message[0].lower() + message[1:]
    if "input" in error and not isinstance(error["input"], dict | list):
        message += f", got {error['input']!r}"
    return message


def _reference_issues(document: YamlDocument) -> list[ConfigIssue]:
    """Cross-section checks pydantic cannot express: names that must exist elsewhere in the file.

    They run on the raw data, so they are reported together with schema errors, not after them.
    """
    data = document.data
    providers = data.get("providers") if isinstance(data.get("providers"), dict) else {}
    models = data.get("models") if isinstance(data.get("models"), dict) else {}
    known = ", ".join(providers) or "none"
    issues = []
    for alias, model in models.items():
        deployments = model.get("deployments") if isinstance(model, dict) else None
        for index, deployment in enumerate(deployments if isinstance(deployments, list) else ()):
            name = deployment.get("provider") if isinstance(deployment, dict) else None
            if not isinstance(name, str):
                continue
            path: tuple[PathPart, ...] = ("models", alias, "deployments", index, "provider")
            where = _where(document.filename, document.line_of(path))
            provider = providers.get(name)
            if provider is None:
                issues.append(ConfigIssue(_path_text(path), f"unknown provider {name!r} (known: {known})", where))
                continue
            provider_type = provider.get("type") if isinstance(provider, dict) else None
            adapter = ADAPTERS.get(provider_type) if isinstance(provider_type, str) else None
            if model.get("mode") == "embeddings" and adapter is not None and not adapter.supports_embeddings:
                message = f"provider {name!r} (type {adapter.provider_type}) does not serve embeddings"
                issues.append(ConfigIssue(_path_text(path), message, where))
        issues.extend(_fallback_issues(document, alias, model, models))
    for index, rule in enumerate(data.get("routes") if isinstance(data.get("routes"), list) else ()):
        target = rule.get("use") if isinstance(rule, dict) else None
        if isinstance(target, str) and target not in models:
            path = ("routes", index, "use")
            known_models = ", ".join(models) or "none"
            issues.append(
                ConfigIssue(
                    _path_text(path),
                    f"unknown model {target!r} (known: {known_models})",
                    _where(document.filename, document.line_of(path)),
                )
            )
    return issues


def _fallback_issues(document: YamlDocument, alias: str, model: Any, models: dict[str, Any]) -> list[ConfigIssue]:
    """Fallback aliases must exist and serve the same endpoint (a chat request cannot fall to embeddings)."""
    fallbacks = model.get("fallbacks") if isinstance(model, dict) else None
    if isinstance(fallbacks, list):
        chains: dict[str, Any] = {"": fallbacks}
    elif isinstance(fallbacks, dict):
        chains = fallbacks
    else:
        return []
    mode = model.get("mode", "chat")
    issues = []
    for kind, chain in chains.items():
        for index, target in enumerate(chain if isinstance(chain, list) else ()):
            if not isinstance(target, str):
                continue
            path: tuple[PathPart, ...] = ("models", alias, "fallbacks", *((kind,) if kind else ()), index)
            where = _where(document.filename, document.line_of(path))
            other = models.get(target)
            if other is None:
                message = f"unknown model {target!r} (known: {', '.join(models) or 'none'})"
            elif target == alias:
                message = "a model cannot fall back to itself"
            elif isinstance(other, dict) and other.get("mode", "chat") != mode:
                message = f"{target!r} serves {other.get('mode', 'chat')}; '{alias}' serves {mode}"
            else:
                continue
            issues.append(ConfigIssue(_path_text(path), message, where))
    return issues


def _path_text(path: tuple[PathPart, ...]) -> str:
    return format_path(path) or "(top level)"
