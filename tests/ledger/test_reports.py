"""Reading the ledger: `GET /admin/usage` on a running gateway, and `llm-gateway usage report` without one."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.ledger.sqlite_store import SQLiteStore
from tests.conftest import serve_gateway
from tests.ledger.conftest import T0, record
from tests.ledger.test_ledger import seed
from tests.support.server import free_port

ADMIN_KEY = "admin-secret"
CONFIG = """
providers: {{p: {{type: mock}}}}
models: {{chat: {{deployments: [{{provider: p, model: m}}]}}}}
admin: {{api_key_sha256: {digest}}}
ledger: {{url: "sqlite:///{db}", spill_path: "{spill}"}}
"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config file whose ledger holds the SEED records, plus one an hour ago and one two days ago."""
    directory = tmp_path_factory.mktemp("ledger")
    db = directory / "ledger.sqlite3"

    async def fill() -> None:
        store = SQLiteStore(db)
        await seed(store)
        now = time.time()
        await store.write([record(900, ts=now - 3600, tenant="recent"), record(901, ts=now - 2 * 86400)])
        await store.aclose()

    asyncio.run(fill())
    config = directory / "gateway.yaml"
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    config.write_text(CONFIG.format(digest=digest, db=db, spill=directory / "spill.jsonl"))
    return config


@pytest.fixture(scope="module")
def gateway(seeded: Path) -> Iterator[str]:
    with serve_gateway(seeded.read_text()) as url:
        yield url


def get_usage(url: str, key: str | None = ADMIN_KEY, **params: str) -> httpx.Response:
    headers = {"x-admin-key": key} if key else {}
    return httpx.get(url + "/admin/usage", params=params, headers=headers)


def test_admin_usage_groups_a_window(gateway: str) -> None:
    response = get_usage(gateway, **{"from": str(int(T0)), "to": str(int(T0) + 1000), "group_by": "tenant,team"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert body["group_by"] == ["tenant", "team"]
    assert (body["from"], body["to"]) == ("2026-09-21T14:13:20Z", "2026-09-21T14:30:00Z")
    assert [(row["tenant"], row["team"], row["requests"]) for row in body["data"]] == [
        ("acme", "growth", 1),
        ("acme", "search", 3),
        ("globex", "ops", 2),
        (None, None, 1),
        ("acme", None, 1),
    ]
    search = body["data"][1]
    assert search == {
        "tenant": "acme",
        "team": "search",
        "requests": 3,
        "errors": 1,
        "prompt_tokens": 350,
        "completion_tokens": 60,
        "cached_tokens": 10,
        "cost_usd": pytest.approx(0.03),
        "estimated": 1,
    }
    assert set(body["ledger"]) >= {"queued", "written", "spilled", "replayed"}
    assert response.headers["x-request-id"]


def test_admin_usage_reads_iso_times_and_filters_by_tenant(gateway: str) -> None:
    # A bare date as `to` is the end of that day, so it takes in the record at T0 + 1000 (cost 7.0) too.
    response = get_usage(gateway, **{"from": "2026-09-21T14:13:20Z", "to": "2026-09-21", "tenant": "acme"})
    assert response.status_code == 200, response.text
    (total,) = response.json()["data"]
    assert (total["requests"], total["cost_usd"]) == (6, pytest.approx(7.0801))


def test_admin_usage_defaults_to_the_last_day(gateway: str) -> None:
    response = get_usage(gateway, group_by="tenant")
    assert [(row["tenant"], row["requests"]) for row in response.json()["data"]] == [("recent", 1)]


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        ({"group_by": "tenant,password"}, "group_by", "Cannot group by password"),
        ({"from": "last tuesday"}, "from", "'from': 'last tuesday' is not a time"),
        ({"to": "2026-13-01"}, "to", "'to': '2026-13-01' is not a time"),
        ({"from": "2026-09-22", "to": "2026-09-21T00:00:00"}, "from", "'from' must be before 'to'."),
    ],
)
def test_admin_usage_refuses_bad_parameters(gateway: str, params: dict[str, str], param: str, message: str) -> None:
    response = get_usage(gateway, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, "invalid_value")
    assert error["message"].startswith(message)


def test_admin_usage_needs_the_admin_key(gateway: str) -> None:
    assert get_usage(gateway, key=None).status_code == 401
    assert get_usage(gateway, key="wrong").json()["error"]["code"] == "invalid_admin_key"


def report(seeded: Path, *args: str) -> list[str]:
    return ["usage", "report", "--config", str(seeded), "--since", str(int(T0)), "--until", str(int(T0) + 1000), *args]


def test_cli_report_as_a_table(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(report(seeded, "--group-by", "tenant")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "usage from 2026-09-21T14:13:20Z to 2026-09-21T14:30:00Z"
    assert lines[1].split() == [
        "tenant",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
        "estimated",
    ]
    assert [line.split() for line in lines[3:]] == [
        ["acme", "5", "1", "1650", "160", "60", "0.0801", "2"],
        ["globex", "2", "1", "150", "30", "0", "0.0070", "0"],
        ["-", "1", "1", "40", "3", "0", "0.0004", "1"],
        ["TOTAL", "8", "3", "1840", "193", "60", "0.0875", "3"],
    ]


def test_cli_report_as_csv(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(report(seeded, "--group-by", "provider,status", "--tenant", "acme", "--format", "csv")) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(row["provider"], row["status"], row["requests"], row["cost_usd"]) for row in rows] == [
        ("anthropic", "200", "1", "0.05"),
        ("openai", "200", "3", "0.0301"),
        ("anthropic", "429", "1", "0.0"),
    ]


def test_cli_report_as_json(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(report(seeded, "--group-by", "feature", "--tenant", "globex", "--format", "json")) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["group_by"] == ["feature"]
    assert body["data"] == [
        {
            "feature": "triage",
            "requests": 2,
            "errors": 1,
            "prompt_tokens": 150,
            "completion_tokens": 30,
            "cached_tokens": 0,
            "cost_usd": 0.007,
            "estimated": 0,
        }
    ]


def test_cli_report_windows_and_errors(seeded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["usage", "report", "--config", str(seeded)]
    assert main([*base, "--group-by", "tenant", "--since", "7d", "--format", "json"]) == 0  # relative window
    assert [row["tenant"] for row in json.loads(capsys.readouterr().out)["data"]] == ["acme", "recent"]
    assert main([*base, "--group-by", "tenant,secret"]) == 2
    assert "cannot group by secret" in capsys.readouterr().err
    assert main([*base, "--group-by", "tenant", "--since", "soon"]) == 2
    assert "'soon' is not a time" in capsys.readouterr().err
    missing = tmp_path / "gateway.yaml"
    missing.write_text(seeded.read_text().replace("ledger.sqlite3", "nowhere.sqlite3"))
    assert main(["usage", "report", "--config", str(missing), "--group-by", "tenant"]) == 1
    assert "no ledger at" in capsys.readouterr().err
    assert not (seeded.parent / "nowhere.sqlite3").exists()


def test_admin_usage_when_the_store_is_down(tmp_path: Path) -> None:
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    config = CONFIG.format(digest=digest, db="x", spill=tmp_path / "spill.jsonl").replace(
        "sqlite:///x",
        f"postgresql://postgres@127.0.0.1:{free_port()}/test",  # nothing listens there
    )
    with serve_gateway(config) as url:
        response = get_usage(url)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "ledger_unavailable"
    assert "postgres" not in response.text  # never the URL: it may hold a password
