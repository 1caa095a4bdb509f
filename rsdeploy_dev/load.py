"""Steady load on a sandbox site while a release runs: what its users would have seen.

A few requests a second (20 by default) go through nginx over HTTPS, by the site's name (SNI,
``Host``, certificate check against a given CA), each on a new connection, in a fixed mix: the
frontend (``GET /``), ``GET /health``, an API read (``GET /api/v1/version``, which asks the
database for its schema revision) and an API write (``POST /api/v1/notes``, a small note whose
text starts with :data:`WRITE_MARKER`). Requests go out on schedule whatever earlier ones are
doing (a slow site does not slow the load down), and the load is bounded in time and count.
Only loopback and the sandbox hosts' own addresses are accepted as targets. Example::

    from rsdeploy_dev import load

    with load.steady("https://127.0.0.1:20443", "rs-rel-bench.test", ca_file, rate=20) as run:
        subprocess.run(["rsdeploy", "deploy", "-i", ..., "--version", "v1.1.0"])
    report = run.report()
    print(report.summary())   # 1250 requests, 37 failed (502: 30, ...), longest failure run ...

A request fails when it gets no answer (its exception's name is its outcome), an answer that is
not 2xx or 3xx, or takes longer than its timeout (10 s).

Requests run on a pool of threads. Importing pyinfra (as rsdeploy does, and so this module,
through the sandbox) lets gevent patch the standard library, and then those threads are
greenlets on one OS thread: the same schedule and timeouts, as long as nothing in the process
computes for long without waiting on I/O.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import math
import secrets
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rsdeploy_dev import sandbox

#: The text every note the load writes starts with (to find or delete them afterwards).
WRITE_MARKER = "rsdeploy-load"
#: A measuring tool, not a stress test: more than this many requests a second is refused.
MAX_RATE = 100.0
#: The most of an answer that is read (the whole of any page of the reference app).
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix. Example: ``Kind("health", "GET", "/health")``."""

    label: str
    method: str
    path: str
    writes: bool = False  # sends a new note (JSON body with WRITE_MARKER)


#: The default mix, sent in turn: each kind gets a quarter of the rate.
MIX = (
    Kind("frontend", "GET", "/"),
    Kind("health", "GET", "/health"),
    Kind("api read", "GET", "/api/v1/version"),
    Kind("api write", "POST", "/api/v1/notes", writes=True),
)


# --- where the load goes -----------------------------------------------------------------------


def sandbox_addresses() -> set[str]:
    """The addresses of every sandbox host recorded on this machine (``.sandbox/*/state.json``).

    Example: ``sandbox_addresses()`` -> ``{"10.213.57.11"}``
    """
    addresses = set()
    for state in sandbox.SANDBOX_ROOT.glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError):  # a sandbox being made or removed
            hosts = json.loads(state.read_text()).get("hosts", [])
            addresses |= {host["address"] for host in hosts}
    return addresses


def _allowed(address: str) -> bool:
    """Loopback or a sandbox host: the load never goes anywhere else (a typo must not aim it
    at somebody's production site)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # names are not resolved: what a name points at can change
    return ip.is_loopback or str(ip) in sandbox_addresses()


@dataclass(frozen=True)
class Target:
    """A site as the load reaches it: the address and port to connect to, the name it is
    asked for (SNI, ``Host`` and the certificate's name) and the TLS context (None: plain HTTP).

    Example: ``Target.of("https://127.0.0.1:20443", "rs-rel-bench.test", "site.pem")``
    """

    address: str
    port: int
    server_name: str
    context: ssl.SSLContext | None

    @classmethod
    def of(cls, url_base: str, server_name: str | None = None,
           ca_file: str | Path | None = None) -> Target:
        """Check ``url_base`` (``http(s)://IP:PORT``, loopback or a sandbox host) and make the
        target; ``server_name`` defaults to the address, ``ca_file`` to the system's CAs.
        """
        url = urllib.parse.urlsplit(url_base)
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
            raise ValueError(f"{url_base!r}: expected http(s)://ADDRESS[:PORT] and no path")
        if not _allowed(url.hostname):
            raise ValueError(f"{url.hostname}: the load goes only to loopback or a sandbox host's "
                             "address (an IP address; the site's name goes in server_name)")
        context = None
        if url.scheme == "https":
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        port = url.port or (443 if context else 80)
        return cls(url.hostname, port, server_name or url.hostname, context)

    @property
    def host_header(self) -> str:
        """``name`` or ``name:port``, as a browser sends it for ``https://name:port/``."""
        default = 443 if self.context else 80
        return self.server_name if self.port == default else f"{self.server_name}:{self.port}"

    def send(self, method: str, path: str, body: bytes | None = None,
             timeout: float = 10) -> int:
        """One request on a new connection; the answer's status (the body is read, up to
        MAX_BODY). Errors raise. Example: ``target.send("GET", "/health")`` -> ``200``
        """
        connection = self._connection(timeout)
        headers = {"Host": self.host_header, "User-Agent": WRITE_MARKER, "Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read(MAX_BODY)  # latency is until the answer has arrived, as a user sees it
            return answer.status
        finally:
            connection.close()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection(self.address, self.port, timeout=timeout)
        return _NamedHTTPSConnection(self.address, self.port, self.server_name, self.context,
                                     timeout)


class _NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address, asking for (and checking the certificate of) another name, like
    ``curl --resolve NAME:PORT:ADDRESS``."""

    def __init__(self, address: str, port: int, server_name: str, context: ssl.SSLContext,
                 timeout: float):
        super().__init__(address, port, timeout=timeout, context=context)
        self._server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP only; TLS below, with the site's name
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)


# --- what was seen -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request: its kind and path, when it started (seconds after the load started), how
    long it took, and its outcome (the status, ``"503"``, or the exception, ``"TimeoutError"``).
    """

    kind: str
    path: str
    start: float
    latency: float
    outcome: str

    @property
    def ok(self) -> bool:
        return self.outcome.isdigit() and 200 <= int(self.outcome) < 400


def percentile(values: list[float], percent: float) -> float:
    """Nearest-rank percentile (a value that was measured); 0 for no values.

    Example: ``percentile([0.1, 0.2, 0.3, 0.4], 50)`` -> ``0.2``
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def failure_runs(samples: list[Sample]) -> list[list[Sample]]:
    """The runs of consecutive failed requests, in the order the requests started.

    Example: outcomes 200, 502, 502, 200, 503 -> ``[[502, 502], [503]]``
    """
    runs, current = [], []
    for sample in sorted(samples, key=lambda s: s.start):
        if sample.ok:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(sample)
    return runs + ([current] if current else [])


def run_seconds(run: list[Sample]) -> float:
    """How long a run of failures lasted: from its first request's start to the end of its
    last answer (a request that timed out counts to its timeout). Example: ``12.4``
    """
    return max(s.start + s.latency for s in run) - run[0].start


@dataclass(frozen=True)
class Report:
    """What a load run saw. Times are seconds; ``first_failure`` and ``last_failure`` are
    seconds after the load started. ``truncated``: a bound (time or count) ended the load
    before the ``with`` block did, so the block's end went unmeasured.
    """

    total: int
    failed: int
    longest_failure_run: float
    longest_failure_run_requests: int
    p50: float
    p95: float
    failures_by_status: dict[str, int]
    failures_by_kind: dict[str, dict[str, int]]
    first_failure: float | None
    last_failure: float | None
    duration: float
    truncated: bool = False

    @classmethod
    def of(cls, samples: list[Sample], duration: float, truncated: bool = False) -> Report:
        """The report of ``samples`` (p50/p95 over every request, failed ones included).

        Example: ``Report.of(run.samples, 60.0).failed`` -> ``37``
        """
        failures = [s for s in samples if not s.ok]
        longest = max(failure_runs(samples), key=run_seconds, default=[])
        by_kind: dict[str, Counter] = {}
        for sample in failures:
            by_kind.setdefault(sample.kind, Counter())[sample.outcome] += 1
        latencies = [s.latency for s in samples]
        return cls(
            total=len(samples), failed=len(failures),
            longest_failure_run=run_seconds(longest) if longest else 0.0,
            longest_failure_run_requests=len(longest),
            p50=percentile(latencies, 50), p95=percentile(latencies, 95),
            failures_by_status=dict(Counter(s.outcome for s in failures).most_common()),
            failures_by_kind={kind: dict(counts.most_common())
                              for kind, counts in sorted(by_kind.items())},
            first_failure=min((s.start for s in failures), default=None),
            last_failure=max((s.start for s in failures), default=None),
            duration=duration, truncated=truncated,
        )

    def summary(self) -> str:
        """One line. Example: ``"1250 requests, 37 failed (502: 30, TimeoutError: 7), longest
        failure run 11.2 s (31 requests), p50 9 ms, p95 41 ms, failures 20.1-31.3 s; by kind:
        api read 502: 15, frontend 502: 15 TimeoutError: 7"``
        """
        text = f"{self.total} requests, {self.failed} failed"
        if self.failed:
            text += " (" + ", ".join(f"{k}: {n}" for k, n in self.failures_by_status.items()) + ")"
            text += (f", longest failure run {self.longest_failure_run:.1f} s "
                     f"({self.longest_failure_run_requests} requests)")
        text += f", p50 {self.p50 * 1000:.0f} ms, p95 {self.p95 * 1000:.0f} ms"
        if self.failed:
            text += f", failures {self.first_failure:.1f}-{self.last_failure:.1f} s; by kind: "
            text += ", ".join(kind + " " + " ".join(f"{k}: {n}" for k, n in counts.items())
                              for kind, counts in self.failures_by_kind.items())
        return text + (" (TRUNCATED: a bound ended the load early)" if self.truncated else "")


# --- the load ----------------------------------------------------------------------------------


class LoadRun:
    """A running load (made by :func:`steady`): ``samples`` so far and :meth:`report`.

    Example: ``run.report().failed`` -> ``0``
    """

    def __init__(self, target: Target, rate: float, timeout: float, max_seconds: float,
                 max_requests: int, mix: tuple[Kind, ...]):
        self.target, self.rate, self.timeout, self.mix = target, rate, timeout, mix
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.samples: list[Sample] = []
        self.run_id = secrets.token_hex(4)  # in every note written: which run wrote it
        self.truncated = False
        self._started = 0.0
        self._ended: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start sending, from a scheduler thread (:func:`steady` calls it)."""
        # Enough workers that none is ever waited for, even if every request takes its timeout.
        self._pool = ThreadPoolExecutor(math.ceil(self.rate * self.timeout) + 2,
                                        thread_name_prefix="load")
        self._started = time.monotonic()
        self._scheduler = threading.Thread(target=self._schedule, name="load-schedule",
                                           daemon=True)
        self._scheduler.start()

    def stop(self) -> None:
        """End the load now: the requests due by now go out (late ones too), no others; then
        wait for those in flight (each ends by its timeout)."""
        with self._lock:
            if self._ended is None:
                self._ended = time.monotonic()
        self._stop.set()
        self._scheduler.join()
        self._pool.shutdown(wait=True)

    def elapsed(self) -> float:
        """Seconds since the load started (the clock of ``Sample.start``)."""
        return time.monotonic() - self._started

    def report(self) -> Report:
        """The report of the samples so far (all of them once the ``with`` block is left)."""
        with self._lock:
            samples = list(self.samples)
        end = self._ended if self._ended is not None else time.monotonic()
        return Report.of(samples, end - self._started, self.truncated)

    def _schedule(self) -> None:
        """Request ``n`` goes out at ``n / rate`` seconds, until stopped or a bound is hit.

        A request this thread could not send on time (a busy machine runs it late) goes out as
        soon as it can, even once the load is stopped if it was due before it: the load keeps its
        count over its whole duration, and each request's ``start`` says when it really went out.
        """
        for number in range(self.max_requests):
            due = number / self.rate
            if due > self.max_seconds:
                break
            stopped = self._stop.wait(max(0.0, self._started + due - time.monotonic()))
            if stopped and self._started + due > self._ended:
                return
            self._pool.submit(self._send, number)
        with self._lock:
            if self._ended is None:  # a bound, not stop(), ended the load
                self.truncated = True
                self._ended = time.monotonic()

    def _send(self, number: int) -> None:
        kind = self.mix[number % len(self.mix)]
        body = None
        if kind.writes:
            body = json.dumps({"body": f"{WRITE_MARKER} {self.run_id} #{number}"}).encode()
        start = time.monotonic()
        try:
            outcome = str(self.target.send(kind.method, kind.path, body, self.timeout))
        except Exception as exc:  # noqa: BLE001 - an error is an outcome to record, not a stop
            outcome = type(exc).__name__
        latency = time.monotonic() - start
        if latency > self.timeout:  # socket timeouts are per read: a trickle can outlast them
            outcome = "TimeoutError"
        with self._lock:
            self.samples.append(Sample(kind.label, kind.path, start - self._started, latency,
                                       outcome))


@contextlib.contextmanager
def steady(url_base: str, server_name: str | None = None, ca_file: str | Path | None = None,
           rate: float = 20.0, timeout: float = 10.0, max_seconds: float = 1800.0,
           max_requests: int = 40_000, mix: tuple[Kind, ...] = MIX) -> Iterator[LoadRun]:
    """Steady load on ``url_base`` for as long as the ``with`` block runs (at most
    ``max_seconds`` and ``max_requests``); on leaving it, the requests in flight are waited for.

    Example::

        with steady("https://127.0.0.1:20443", "rs-rel-bench.test", "site.pem") as run:
            time.sleep(30)
        print(run.report().summary())
    """
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate {rate}: expected more than 0 and at most {MAX_RATE:.0f} a second")
    if timeout <= 0 or max_seconds <= 0 or max_requests <= 0 or not mix:
        raise ValueError("timeout, max_seconds, max_requests and the mix must be positive")
    run = LoadRun(Target.of(url_base, server_name, ca_file), rate, timeout, max_seconds,
                  max_requests, tuple(mix))
    run.start()
    try:
        yield run
    finally:
        run.stop()
