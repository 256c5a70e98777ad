"""The deployment files agree with the code: there is no Docker engine here to run them, so check what
can be checked offline: the config they mount is valid and the paths and ports they name exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gateway.config import load_config


def test_compose_file_mounts_a_valid_config_and_runs_the_cli(repo_root: Path) -> None:
    compose = yaml.safe_load((repo_root / "deploy" / "docker-compose.yaml").read_text())
    gateways = {name: service for name, service in compose["services"].items() if name.startswith("gateway")}
    assert len(gateways) == 2  # replicas share one Redis
    for service in gateways.values():
        source = service["volumes"][0].split(":")[0]
        config_path = (repo_root / "deploy" / source).resolve()
        loaded = load_config(config_path, environ=service["environment"])
        assert loaded.config.state.redis_url is not None
        assert service["command"][0] == "serve" and (repo_root / "deploy" / service["build"]).resolve() == repo_root


def test_dockerfile_copies_every_package_and_serves_the_shipped_config(repo_root: Path) -> None:
    dockerfile = (repo_root / "Dockerfile").read_text()
    packages = {path.parent.name for path in repo_root.glob("*/__init__.py")}
    assert packages == {"gateway", "providers", "routing", "tests"}
    for package in packages - {"tests"}:
        assert f"COPY {package} ./{package}" in dockerfile
    config = re.search(r'"--config", "/app/(\S+)"', dockerfile)
    assert config is not None and (repo_root / config.group(1)).is_file()
    assert "USER 10001" in dockerfile  # never root
