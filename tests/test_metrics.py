"""The server's /metrics counts what the guard does, on a real server with a real kernel."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PYTHON, STANDINS, wait_for

pytestmark = pytest.mark.integration


async def scrape(jp_fetch) -> dict[tuple, float]:
    """Every sample on /metrics: (name, sorted labels) -> value."""
    text = (await jp_fetch("metrics")).body.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


INCIDENT = ("colab_guard_incidents_total", (("action", "interrupt"), ("category", "crypto-mining")))


async def test_metrics_count_an_incident(jp_fetch, kernel, guard, pool):
    before = await scrape(jp_fetch)
    code = (f"import subprocess\n"
            f"subprocess.Popen([{PYTHON!r}, {str(STANDINS / 'miner.py')!r}, '-o', "
            f"'stratum+tcp://127.0.0.1:{pool}']).wait()\n")
    await kernel.run(code, timeout=60)
    await wait_for(lambda: [i for i in guard.store.query() if i.status == "done"], timeout=20)

    after = await scrape(jp_fetch)
    assert after[INCIDENT] == before.get(INCIDENT, 0) + 1
    assert after[("colab_guard_kernels_monitored", ())] == 1
    assert after[("colab_guard_processes_sampled_total", ())] > \
        before.get(("colab_guard_processes_sampled_total", ()), 0)
    # the miner was new, so read in full; the kernel and the others did not all run
    read_in_full = after[("colab_guard_processes_read_in_full_total", ())] - \
        before.get(("colab_guard_processes_read_in_full_total", ()), 0)
    assert 0 < read_in_full
    assert after[("colab_guard_processes_read_in_full_total", ())] <= \
        after[("colab_guard_processes_sampled_total", ())]
    assert after[("colab_guard_sample_duration_seconds_count", ())] > \
        before.get(("colab_guard_sample_duration_seconds_count", ()), 0)
    for name in ("colab_guard_record_errors_total", "colab_guard_kernel_starts_refused_total"):
        assert (name, ()) in after
