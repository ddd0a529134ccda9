"""The service's Prometheus metrics (``/services/colab-guard/metrics``).

Counters for what the service took and refused since it started; gauges read from the
database at each scrape (strikes counting now, active bans, open appeals), so they are
right after a restart and with several replicas. No user names in labels: category,
action and the refusal's reason only.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .database import HubDatabase, strongest_action

PREFIX = "colab_guard_hub"


class _FromDatabase:
    def __init__(self, db: HubDatabase):
        self.db = db

    def collect(self):
        totals = self.db.totals()
        for name, help_ in (("strikes", "Strikes counting against users now."),
                            ("bans", "Users banned by an admin now."),
                            ("appeals_open", "Appeals waiting for an admin."),
                            ("users_at_limit", "Users at the strike limit now.")):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", help_, value=totals[name])


class Metrics:
    def __init__(self, db: HubDatabase):
        self.registry = CollectorRegistry()
        self.incidents = Counter(f"{PREFIX}_incidents", "Incident reports taken, by category "
                                 "and the strongest action taken.", ["category", "action"],
                                 registry=self.registry)
        self.reports = Counter(f"{PREFIX}_reports", "Report requests, by outcome.",
                               ["outcome"], registry=self.registry)
        self.refusals = Counter(f"{PREFIX}_reports_refused", "Reports refused, by reason "
                                "(token, scope, user, malformed).", ["reason"],
                                registry=self.registry)
        self.registry.register(_FromDatabase(db))

    def taken(self, incident: dict[str, Any]) -> None:
        self.incidents.labels(incident["category"], strongest_action(incident)).inc()

    def report_taken(self) -> None:
        self.reports.labels("taken").inc()

    def refused(self, reason: str) -> None:
        self.reports.labels("refused").inc()
        self.refusals.labels(reason).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
