"""Where every replica's engine figures meet, so that the ingress's /metrics shows them all, by replica."""

from __future__ import annotations

import time

from qadapter.server.engine.stats import EngineStats

HUB_NAME = "qadapter-metrics-hub"
STALE_AFTER_S = 10.0  # a replica that stopped reporting (dead, restarting) drops out of /metrics


class MetricsHub:
    """A Ray actor (see launch.py): replicas `report`, the ingress reads `snapshot`."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, EngineStats]] = {}

    def report(self, replica: str, stats: EngineStats) -> None:
        self._latest[replica] = (time.monotonic(), stats)

    def snapshot(self) -> dict[str, EngineStats]:
        now = time.monotonic()
        self._latest = {r: entry for r, entry in self._latest.items() if now - entry[0] < STALE_AFTER_S}
        return {replica: stats for replica, (_, stats) in self._latest.items()}
