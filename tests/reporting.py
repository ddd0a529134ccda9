"""Fixtures for the tests of reporting to the hub: a stand-in hub service on loopback and
reporters that send to it (import both fixtures into the test module)."""

from __future__ import annotations

import pytest

from colab_guard.record.reporter import HubReporter, ReportQueue
from tests.standins.hub_service import HubStandin


@pytest.fixture
def service():
    hub = HubStandin(token="report-token").start()
    yield hub
    hub.close()


@pytest.fixture
def make_reporter(tmp_path, service):
    """make(source, limit, timeout): a reporter with its own queue file, stopped at the end."""
    made = []

    def make(source: str = "server", limit: int = 100, timeout: float = 5.0) -> HubReporter:
        queue = ReportQueue(tmp_path / "hub-reports.sqlite", limit)
        reporter = HubReporter(service.url, service.token, queue, source, node="node-a",
                               timeout=timeout, backoff=0.05, backoff_max=0.3)
        made.append(reporter)
        return reporter

    yield make
    for reporter in made:
        reporter.stop(timeout=10)
