"""Hot reload: a new config replaces the running one atomically, or not at all.

Triggers: the file changing (watchfiles; the file's directory is watched, so Kubernetes ConfigMap
updates, which swap a symlink, are seen too), SIGHUP, and `POST /admin/config/reload`. A reload parses
and validates the whole file first; an invalid file changes nothing, and its errors (key path and line)
are logged and returned. A valid one is built into a new runtime and swapped in with one assignment:
requests already running finish on the runtime they started with. Live stats carry over for the
deployments that still exist, and so does the HTTP connection pool unless its settings changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, load_config
from gateway.runtime import Runtime

log = logging.getLogger("llm_gateway.reload")

#: How long a replaced HTTP client stays open for requests still using it (the longest call limit).
_OLD_CLIENT_GRACE_S = 600.0


@dataclass
class ReloadResult:
    ok: bool
    summary: str = ""
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        if self.ok:
            return {"status": "reloaded", "summary": self.summary}
        return {"status": "rejected", "errors": self.errors, "detail": "the running config was kept"}


class ConfigReloader:
    def __init__(self, app: Any, path: Path) -> None:
        self.app = app
        self.path = path
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reloads = 0

    async def reload(self) -> ReloadResult:
        async with self._lock:  # one reload at a time; a burst of file events collapses into a few
            try:
                loaded = await asyncio.to_thread(load_config, self.path)
            except ConfigError as exc:
                errors = [str(issue) for issue in exc.issues]
                log.error("config reload rejected, keeping the running config:\n  %s", "\n  ".join(errors))
                return ReloadResult(ok=False, errors=errors)
            old: Runtime = self.app.state.runtime
            same_http = loaded.config.server.http_client == old.config.server.http_client
            try:
                new = Runtime.build(
                    loaded, started_at=old.started_at, previous=old, http=old.http if same_http else None
                )
            except Exception as exc:  # valid YAML that still cannot be built (e.g. an unusable proxy URL)
                # Only the type: messages about URLs (state.redis_url, ledger.url, a proxy) can quote a password.
                error = (
                    f"(config): cannot build the gateway from it ({type(exc).__name__}); "
                    "check state.redis_url, ledger.url and server.http_client.proxy"
                )
                log.error("config reload rejected, keeping the running config: %s", error)
                return ReloadResult(ok=False, errors=[error])
            self.app.state.runtime = new  # the swap: one assignment, seen by every request from now on
            # Only now forget the state of deployments that are gone (a failed build must not lose it).
            new.adopt_state()
            self.reloads += 1
            if not same_http:
                self._spawn(self._close_later(old))
            if new.limits is not old.limits:  # state.redis_url changed: the old pool goes once requests end
                self._spawn(self._close_limits_later(old))
            log.info("config reloaded: %s", loaded.summary())
            return ReloadResult(ok=True, summary=loaded.summary())

    async def _close_later(self, old: Runtime) -> None:
        await asyncio.sleep(_OLD_CLIENT_GRACE_S)
        await old.aclose()

    async def _close_limits_later(self, old: Runtime) -> None:
        await asyncio.sleep(_OLD_CLIENT_GRACE_S)  # requests admitted by the old limits settle with them
        await old.limits.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self, *, watch: bool) -> None:
        if watch and self.path.is_file():
            self._spawn(self._watch())
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            # Only the main thread may own signal handlers (tests run servers in other threads).
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    async def _watch(self) -> None:
        from watchfiles import awatch

        directory, name = self.path.parent, self.path.name
        last = self._fingerprint()
        async for changes in awatch(directory, debounce=200, step=50, rust_timeout=1000):
            if not any(Path(changed).name in (name, "..data") for _, changed in changes):
                continue
            fingerprint = self._fingerprint()
            if fingerprint != last:  # editors touch files without changing them; don't reload for that
                last = fingerprint
                await self.reload()

    def _fingerprint(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None
