"""``/healthz`` (liveness), ``/readyz`` and ``/metrics`` (Prometheus) over HTTP.

Served from the first moment, by leaders and standby replicas alike: a replica waiting
for the Lease is alive and ready to take over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class HealthServer:
    def __init__(self, host: str, ports: list[int], state: Callable[[], dict[str, Any]]) -> None:
        self.host = host
        self.ports = list(dict.fromkeys(ports))
        self.state = state
        self._runner: web.AppRunner | None = None

    async def start(self) -> list[int]:
        """Start serving on every port; returns the bound ports (useful with port 0)."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        bound = []
        for port in self.ports:
            site = web.TCPSite(self._runner, self.host, port)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            bound.append(sockets[0].getsockname()[1] if sockets else port)
        self.ports = bound
        return bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **self.state()})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
