"""Config loading: every error names its key path and line; `config validate` and `serve` agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config
from providers.registry import ADAPTERS

BROKEN = """\
providers:
  bedrock-us:
    type: mock
  together:
    type: openai
    base_url: https://api.together.xyz/v1
    api_key: ${TOGETHER_KEY_FOR_TEST}
models:
  chat-fast:
    deployments:
      - provider: together
        model: llama
      - provider: bedrok
        model: llama
    strategy: ordered
    temprature: 3
  chat-slow:
    deployments: []
"""


def issues_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gateway.yaml", environ or {})
    return [str(issue) for issue in caught.value.issues]


def test_every_error_is_listed_with_key_path_and_line() -> None:
    issues = issues_of(BROKEN)
    assert len(issues) == 4
    assert "models.chat-fast.temprature: unknown key at gateway.yaml:16" in issues
    assert any(issue.startswith("models.chat-slow.deployments: list should have at least 1 item") for issue in issues)
    assert any(
        "environment variable TOGETHER_KEY_FOR_TEST is not set" in issue and issue.endswith(":7") for issue in issues
    )


def test_unknown_provider_reference_names_the_known_ones() -> None:
    text = BROKEN.replace("    temprature: 3\n", "").replace(
        "    deployments: []\n", "    deployments: [{provider: together, model: x}]\n"
    )
    assert issues_of(text, {"TOGETHER_KEY_FOR_TEST": "k"}) == [
        "models.chat-fast.deployments[1].provider: unknown provider 'bedrok' (known: bedrock-us, together) "
        "at gateway.yaml:13"
    ]


def test_unknown_provider_type_and_wrong_value_types() -> None:
    issues = issues_of("""\
providers:
  a: {type: bedrok}
  b:
    type: mock
    ttft_ms: slow
models:
  m: {deployments: [{provider: b, model: x}]}
""")
    known = ", ".join(ADAPTERS)
    assert f"providers.a.type: unknown provider type 'bedrok' (known: {known}) at gateway.yaml:2" in issues
    assert any(
        issue.startswith("providers.b.ttft_ms: input should be a valid number") and issue.endswith(":5")
        for issue in issues
    )


def test_yaml_syntax_errors_give_the_line() -> None:
    assert issues_of("providers:\n  a: {type: mock\nmodels: {}\n")[0].endswith("gateway.yaml:3")


def test_duplicate_keys_are_errors() -> None:
    issues = issues_of(
        "providers:\n  a: {type: mock}\n  a: {type: mock}\nmodels:\n  m: {deployments: [{provider: a, model: x}]}\n"
    )
    assert issues == ["providers.a: duplicate key 'a' at gateway.yaml:3"]


def test_environment_interpolation() -> None:
    text = """\
server: {max_body_bytes: "${BODY_LIMIT:-4096}"}
providers:
  up: {type: openai, base_url: "${BASE}/v1", api_key: "${KEY}", headers: {x-literal: "$${NOT_A_VAR}"}}
models:
  m: {deployments: [{provider: up, model: x}]}
"""
    config = parse_config(text, "t.yaml", {"BASE": "http://127.0.0.1:9", "KEY": "sk-secret"}).config
    provider = config.providers["up"]
    assert config.server.max_body_bytes == 4096
    assert provider.base_url == "http://127.0.0.1:9/v1"  # type: ignore[union-attr]
    assert provider.api_key.get_secret_value() == "sk-secret"  # type: ignore[union-attr]
    assert provider.headers == {"x-literal": "${NOT_A_VAR}"}  # type: ignore[union-attr]
    assert "sk-secret" not in repr(config)  # secrets never print


def test_timeouts_inherit_from_server_to_alias_to_deployment() -> None:
    from routing.router import Router

    loaded = parse_config(
        """\
server: {timeouts: {connect_s: 2, total_s: 100}}
providers: {p: {type: mock}}
models:
  m:
    timeouts: {first_token_s: 7}
    deployments: [{provider: p, model: a, timeouts: {total_s: 30}}, {provider: p, model: b}]
""",
        "t.yaml",
        {},
    )
    router = Router(loaded.config.models, {"p": object()}, loaded.config.server.timeouts)  # type: ignore[dict-item]
    first, second = router.deployments("m")
    assert (first.timeouts.connect_s, first.timeouts.first_token_s, first.timeouts.idle_s, first.timeouts.total_s) == (
        2,
        7,
        60,
        30,
    )
    assert second.timeouts.total_s == 100


def test_the_shipped_default_config_is_valid(repo_root: Path) -> None:
    loaded = load_config(repo_root / "config" / "gateway.yaml", environ={})
    assert {provider.type for provider in loaded.config.providers.values()} == {"mock"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_config_validate_command(tmp_path: Path, repo_root: Path) -> None:
    ok = run_cli("config", "validate", str(repo_root / "config" / "gateway.yaml"), cwd=tmp_path)
    assert ok.returncode == 0 and ": OK: 3 models" in ok.stdout and ok.stdout.count("\n") == 1

    broken = tmp_path / "gateway.yaml"
    broken.write_text(BROKEN)
    result = run_cli("config", "validate", str(broken), cwd=tmp_path)
    assert result.returncode == 1
    assert f"models.chat-fast.temprature: unknown key at {broken}:16" in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"{broken}: 4 errors"
    assert (
        f"  models.chat-fast.deployments[1].provider: unknown provider 'bedrok' (known: bedrock-us, together) "
        f"at {broken}:13" in lines
    )


def test_serve_refuses_a_broken_config_with_the_same_message(tmp_path: Path) -> None:
    broken = tmp_path / "gateway.yaml"
    broken.write_text(BROKEN)
    validate = run_cli("config", "validate", str(broken), cwd=tmp_path)
    serve = run_cli("serve", "--config", str(broken), "--port", "1", cwd=tmp_path)
    assert serve.returncode == 1
    assert serve.stderr == validate.stderr


def test_the_readme_config_reference_is_a_valid_config(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    start = readme.index("```yaml\nserver:") + len("```yaml\n")
    block = readme[start : readme.index("```", start)]
    environ = {"REDIS_URL": "redis://127.0.0.1:6379/0", "OPENAI_API_KEY": "sk-x"}
    loaded = parse_config(block, "README.md", environ)
    assert loaded.config.models["gpt-4o-mini"].deployments[0].price.output_per_mtok == 0.60  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        (
            "providers:\n  a: {type: openai, api_key: '${KEY:fallback}'}\n",
            {"KEY": "v"},
            "providers.a.api_key: malformed ${...} reference: write ${NAME} or ${NAME:-default} at gateway.yaml:2",
        ),
        (
            "providers:\n  a: {type: openai, api_key: '${KEY}'}\n",
            {"KEY": ""},
            "providers.a.api_key: environment variable KEY is empty (write ${KEY:-default} to give a default) "
            "at gateway.yaml:2",
        ),
        ("providers:\n  a: {type: [mock]}\n", {}, "providers.a.type: unknown provider type"),
        (
            "providers:\n  a: {type: mock}\nmodels:\n  no: {deployments: [{provider: a, model: x}]}\n",
            {},
            "models: keys must be strings, got False (YAML reads yes/no/on/off as booleans: quote the name)",
        ),
    ],
)
def test_config_typos_are_errors_not_silent_values(text: str, environ: dict[str, str], expected: str) -> None:
    if "models:" not in text:
        text += "models:\n  m: {deployments: [{provider: a, model: x}]}\n"
    assert any(issue.startswith(expected) for issue in issues_of(text, environ))


def test_a_config_that_is_not_utf8_is_reported_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"providers:\n  a: {type: mock}\n# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "not UTF-8" in str(caught.value)


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("{type: bedrock, region: us-east}", "providers.p.region: string should match pattern"),
        (
            "{type: bedrock, region: us-east-1, aws_secret_acess_key: x}",
            "providers.p.aws_secret_acess_key: unknown key",
        ),
        ("{type: vertex, project: p, location: us-central1}", "providers.p: set exactly one of"),
        (
            "{type: vertex, project: p, location: us-central1, adc: true, credentials_json: '{}'}",
            "providers.p: set exactly one of",
        ),
        (
            "{type: vertex, project: p, location: us-central1, credentials_file: /nonexistent/sa.json}",
            "providers.p.credentials_file: credentials file not found: /nonexistent/sa.json",
        ),
        ("{type: vertex, location: us-central1, adc: true}", "providers.p.project: required key is missing"),
    ],
)
def test_cloud_provider_settings_are_validated(provider: str, expected: str) -> None:
    text = f"providers:\n  p: {provider}\nmodels:\n  m: {{deployments: [{{provider: p, model: x}}]}}\n"
    issues = issues_of(text)
    assert any(issue.startswith(expected) and issue.endswith("gateway.yaml:2") for issue in issues), issues


def test_cloud_secrets_never_print() -> None:
    text = """\
providers:
  aws: {type: bedrock, region: us-east-1, aws_access_key_id: AKID, aws_secret_access_key: aws-very-secret}
  gcp: {type: vertex, project: p, location: global, credentials_json: '{"private_key": "gcp-very-secret"}'}
models:
  m: {deployments: [{provider: aws, model: x}]}
"""
    config = parse_config(text, "t.yaml", {}).config
    assert "very-secret" not in repr(config) and "very-secret" not in str(config.model_dump())


FALLBACKS = """\
providers:
  m: {type: mock}
models:
  chat:
    deployments: [{provider: m, model: a}]
    fallbacks:
      default: [chat-b, nowhere]
      context_window: [chat]
  chat-b:
    deployments: [{provider: m, model: b}]
    fallbacks: [vectors]
  vectors:
    mode: embeddings
    deployments: [{provider: m, model: mock-embedding-1}]
"""


def test_fallback_chains_name_existing_models_of_the_same_mode() -> None:
    assert issues_of(FALLBACKS) == [
        "models.chat.fallbacks.default[1]: unknown model 'nowhere' (known: chat, chat-b, vectors) at gateway.yaml:7",
        "models.chat.fallbacks.context_window[0]: a model cannot fall back to itself at gateway.yaml:8",
        "models.chat-b.fallbacks[0]: 'vectors' serves embeddings; 'chat-b' serves chat at gateway.yaml:11",
    ]


def test_resilience_settings_have_defaults_and_per_alias_overrides() -> None:
    text = """\
server:
  resilience:
    retry: {attempts_per_deployment: 3}
    circuit_breaker: {consecutive_failures: 2, cooldown_s: 1}
providers:
  m: {type: mock}
models:
  chat:
    retry: {attempts_per_deployment: 1, max_attempts: 2}
    hedge: {after_ms: 250}
    fallbacks: [other]
    deployments: [{provider: m, model: a, prefill: false}]
  other: {deployments: [{provider: m, model: b}]}
"""
    config = parse_config(text, "gateway.yaml", {}).config
    assert config.server.resilience.retry.attempts_per_deployment == 3
    assert config.server.resilience.circuit_breaker.consecutive_failures == 2
    chat = config.models["chat"]
    assert chat.retry is not None and chat.retry.max_attempts == 2
    assert chat.hedge is not None and chat.hedge.after_ms == 250
    assert chat.fallbacks.for_kind("unavailable") == ["other"]
    assert chat.fallbacks.for_kind("context_window") == ["other"], "unset: the default chain"
    assert chat.fallbacks.for_kind("content_filter") == [], "a filtered request fails unless told otherwise"
    assert chat.deployments[0].prefill is False
    assert config.models["other"].hedge is None
