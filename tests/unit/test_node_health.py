"""The node agent's health-check and restart-backoff state machines, on a clock the test steps."""

from __future__ import annotations

import pytest

from lastbackend.model.health import STARTUP_INTERVAL, HealthCheck, HealthCheckData, default_check
from lastbackend.node.health import BACKOFF_MAX, BACKOFF_RESET, Readiness, Restarts


def check(timeout: int = 10, interval: int = 2) -> HealthCheck:
    return HealthCheck("http", HealthCheckData(timeout=timeout, interval=interval))  # type: ignore[arg-type]


def test_startup_checks_are_frequent_then_the_interval_applies() -> None:
    r = Readiness(check(interval=5), started=0.0)
    assert r.due(0.0)
    assert r.record(False, 0.0) == (False, False)
    assert not r.due(STARTUP_INTERVAL / 2)
    assert r.due(STARTUP_INTERVAL)
    assert r.record(True, 1.0) == (True, False)  # became ready: write it
    assert r.ready
    assert not r.due(3.0)
    assert r.due(6.0)


def test_never_ready_within_the_timeout_means_restart() -> None:
    r = Readiness(check(timeout=10), started=100.0)
    assert r.record(False, 105.0) == (False, False)
    assert r.record(False, 110.0) == (False, True)  # 10 s after it started


def test_a_ready_container_leaves_the_upstreams_after_three_failures_and_restarts_later() -> None:
    r = Readiness(check(timeout=10), started=0.0)
    r.record(True, 1.0)
    assert r.record(False, 50.0) == (False, False)  # one slow check: still ready
    assert r.record(False, 52.0) == (False, False)
    assert r.ready
    assert r.record(False, 54.0) == (True, False)  # the third: routers stop sending
    assert not r.ready
    assert r.record(True, 56.0) == (True, False)  # back
    for at in (70.0, 72.0, 74.0):
        r.record(False, at)
    assert r.record(False, 80.0) == (False, True)  # failing 10 s since it first failed


def test_backoff_doubles_to_five_minutes_and_resets_after_ten_minutes_of_running() -> None:
    r = Restarts()
    waits = []
    now = 0.0
    for n in range(12):
        r.stopped(f"c{n}", ran=0.5, now=now, reason="Error")
        waits.append(r.wait(now))
        now += r.wait(now)
    assert waits[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert max(waits) == BACKOFF_MAX
    assert r.count == 12
    r.stopped("long", ran=BACKOFF_RESET, now=now, reason="Completed")
    assert (r.count, r.wait(now), r.reason) == (1, 1.0, "Completed")


def test_each_stopped_container_counts_once() -> None:
    r = Restarts()
    r.stopped("c1", 0.0, 0.0, "Error")
    r.stopped("c1", 0.0, 0.5, "Error")  # seen again by the next reconcile
    assert r.count == 1
    assert r.wait(0.5) == pytest.approx(0.5)


def test_default_check_follows_the_ports() -> None:
    assert default_check({"8080/TCP": 0}).type == "port"
    assert default_check({"53/UDP": 0}).type == "process"
    assert default_check({}).type == "process"
