"""The load generator (rsdeploy_dev.load) against a local HTTP server that fails on demand:
what it counts as a failure, the report's arithmetic (longest failure run, percentiles), its
bounds and the addresses it refuses. Fast; no Docker.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rsdeploy_dev import load


class Switchable(ThreadingHTTPServer):
    """A site on 127.0.0.1 answering 200, or 503 while ``failing`` is set, or late while
    ``slow`` is set (seconds); it keeps each request's Host header and body."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failing = False
        self.slow = 0.0
        self.hosts: list[str] = []
        self.bodies: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hosts.append(self.headers["Host"])
        time.sleep(self.server.slow)
        self.send_response(503 if self.server.failing else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self) -> None:
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.do_GET()

    def log_message(self, *args) -> None:  # quiet test output
        pass


@pytest.fixture
def site():
    server = Switchable()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def sample(start: float, outcome: str, latency: float = 0.01) -> load.Sample:
    return load.Sample("health", "/health", start, latency, outcome)


def test_a_failing_window_is_one_run_as_long_as_the_window(site):
    with load.steady(site.url, "site.test", rate=50) as run:
        time.sleep(0.4)
        before = run.elapsed()
        site.failing, began = True, run.elapsed()
        time.sleep(0.6)
        ended = run.elapsed()
        site.failing, after = False, run.elapsed()
        time.sleep(0.4)
    report = run.report()
    # Every request due while the load ran went out, however late a busy machine ran it.
    assert report.total == math.floor(report.duration * 50) + 1
    assert report.duration >= 1.4
    # Each request saw the site as it was while it was in flight: one sent and answered inside
    # the window failed, one wholly outside it succeeded (one that straddles an edge may do
    # either). Exact, whatever a busy machine (client and server share it) does to the timing.
    inside = [s for s in run.samples if s.start >= began and s.start + s.latency <= ended]
    outside = [s for s in run.samples if s.start + s.latency <= before or s.start >= after]
    assert inside and all(not s.ok for s in inside)
    assert outside and all(s.ok for s in outside)
    failed = [s for s in run.samples if not s.ok]
    assert report.failed == len(failed) >= len(inside)
    assert report.failures_by_status == {"503": report.failed}
    assert set(report.failures_by_kind) == {k.label for k in load.MIX}
    # One run, from the first failed request's start to the last one's answer: the window.
    assert report.longest_failure_run_requests == report.failed
    assert report.first_failure == min(s.start for s in failed)
    assert report.last_failure == max(s.start for s in failed)
    assert all(s.start + s.latency >= before and s.start <= after for s in failed)  # in flight
    assert report.longest_failure_run == pytest.approx(
        max(s.start + s.latency for s in failed) - report.first_failure)
    assert report.longest_failure_run >= max(s.start + s.latency for s in inside) - min(
        s.start for s in inside)
    assert not report.truncated


def test_every_kind_is_sent_by_name_and_writes_carry_the_marker(site):
    with load.steady(site.url, "site.test", rate=40, max_requests=8) as run:
        time.sleep(0.5)
    assert sorted(s.path for s in run.samples) == sorted([k.path for k in load.MIX] * 2)
    assert set(site.hosts) == {f"site.test:{site.server_address[1]}"}
    assert [b["body"].split()[:2] for b in site.bodies] == [[load.WRITE_MARKER, run.run_id]] * 2


def test_no_answer_is_a_failure_named_by_its_exception():
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with load.steady(url, rate=50, max_requests=4) as run:
        time.sleep(0.2)
    assert run.report().failures_by_status == {"ConnectionRefusedError": 4}


def test_an_answer_later_than_the_timeout_is_a_failure(site):
    site.slow = 0.5
    with load.steady(site.url, rate=20, timeout=0.2, max_requests=2) as run:
        time.sleep(0.1)
    report = run.report()
    assert report.failures_by_status == {"TimeoutError": 2}
    assert 0.2 <= report.p95 < 0.45  # the timeout (late on a busy machine), not the server's 0.5 s


def test_the_load_stops_at_its_bounds(site):
    with load.steady(site.url, rate=50, max_requests=5) as run:
        time.sleep(0.5)
    assert (run.report().total, run.report().truncated) == (5, True)
    with load.steady(site.url, rate=50, max_seconds=0.2) as run:
        time.sleep(1.0)
    assert run.report().total == 11 and run.report().truncated  # at 0, 0.02, ... 0.2 s


def test_longest_run_is_the_longest_in_seconds_with_timeouts_counted_to_their_end():
    samples = [sample(0.0, "200"), sample(0.1, "502"), sample(0.2, "502"), sample(0.3, "502"),
               sample(0.4, "200"), sample(0.5, "TimeoutError", latency=10.0), sample(0.6, "200")]
    report = load.Report.of(samples, 1.0)
    assert report.longest_failure_run == pytest.approx(10.0)
    assert report.longest_failure_run_requests == 1
    assert (report.first_failure, report.last_failure) == (0.1, 0.5)
    assert report.failures_by_status == {"502": 3, "TimeoutError": 1}


def test_the_summary_says_which_kinds_of_request_failed_and_how():
    samples = [sample(0.0, "200"), load.Sample("api write", "/api/v1/notes", 0.1, 0.01, "500"),
               sample(0.2, "TimeoutError", latency=10.0), sample(0.3, "503")]
    summary = load.Report.of(samples, 1.0).summary()
    assert summary.endswith("; by kind: api write 500: 1, health TimeoutError: 1 503: 1"), summary


def test_runs_follow_start_order_not_completion_order():
    samples = [sample(0.2, "502"), sample(0.0, "200"), sample(0.1, "502"), sample(0.3, "200")]
    assert [[s.start for s in run] for run in load.failure_runs(samples)] == [[0.1, 0.2]]


def test_percentiles_are_nearest_rank_over_every_request():
    values = [i / 100 for i in range(1, 101)]
    assert load.percentile(values, 95) == 0.95
    assert load.percentile(values, 50) == 0.50
    assert load.percentile([0.3], 95) == 0.3 and load.percentile([], 95) == 0.0
    report = load.Report.of([sample(i, "200", i / 100) for i in range(1, 21)], 20.0)
    assert (report.p50, report.p95, report.failed, report.longest_failure_run) == (0.1, 0.19, 0, 0)


def test_3xx_is_an_answer_and_4xx_a_failure():
    assert load.Sample("k", "/", 0, 0, "302").ok
    assert not load.Sample("k", "/", 0, 0, "404").ok
    assert not load.Sample("k", "/", 0, 0, "SSLCertVerificationError").ok


@pytest.mark.parametrize("url", ["https://93.184.215.14", "https://example.org", "ftp://127.0.0.1",
                                 "https://127.0.0.1:8443/api"])
def test_other_addresses_and_urls_are_refused(url):
    with pytest.raises(ValueError):
        load.Target.of(url, "site.test")


def test_a_sandbox_hosts_address_is_accepted(tmp_path, monkeypatch):
    (tmp_path / "rs-x").mkdir()
    (tmp_path / "rs-x" / "state.json").write_text(json.dumps(
        {"hosts": [{"name": "rs-x-1", "address": "10.213.7.11"}]}))
    monkeypatch.setattr(load.sandbox, "SANDBOX_ROOT", tmp_path)
    target = load.Target.of("https://10.213.7.11", "rs-x.test")
    assert (target.port, target.host_header) == (443, "rs-x.test")


def test_rates_beyond_a_steady_load_are_refused():
    with pytest.raises(ValueError), load.steady("http://127.0.0.1:9", rate=500):
        pass
