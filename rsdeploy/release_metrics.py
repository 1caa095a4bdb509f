"""Release metrics: each host's release record as Prometheus metrics, read by node-exporter.

The deploy writes :data:`METRICS_FILE` into :func:`metrics_dir` on every host; node-exporter's
textfile collector (``--collector.textfile.directory``, set by :mod:`roles.exporters`) serves it
with the host's other metrics, so Prometheus scrapes it with ``job="node"`` and ``instance`` =
the inventory host name. The alert rules ``ReleaseMismatch`` and ``ReleaseAttemptFailed``
(``templates/prometheus/rules/release.yml``) read it.

The collector reads only ``*.prom`` files, and may read one while it is being written: write the
text to a temporary name that does not end in ``.prom`` in the same directory, then rename it
(:func:`rsdeploy.apply.file_in_one_step` does: ``rsdeploy_release.prom.rsdeploy-new``).

Example (deploy)::

    text = render_metrics(stack_label(hs), current=record, last=record)
    apply.file_in_one_step(name="Record the release for monitoring", content=text,
                           dest=f"{metrics_dir(hs)}/{METRICS_FILE}")

A release record is a mapping: ``version`` (the tag), ``commit`` (hex, or "" when unknown),
``result`` (``ok``, ``failed`` or ``rolled_back``), ``started`` and ``ended`` (ISO 8601 UTC,
``2026-11-30T15:40:00Z``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: The file the deploy writes into :func:`metrics_dir`.
METRICS_FILE = "rsdeploy_release.prom"

#: Each metric family: (name, HELP text). Every one is a gauge.
INFO = ("rsdeploy_release_info",
        "The release this host runs (last successful deploy): version tag and commit.")
DEPLOYED = ("rsdeploy_release_deployed_timestamp_seconds",
            "When the last successful deploy of this host ended, in Unix seconds.")
SUCCESS = ("rsdeploy_release_last_attempt_success",
           "Whether the last deploy attempt on this host succeeded (1) or not (0).")
ATTEMPTED = ("rsdeploy_release_last_attempt_timestamp_seconds",
             "When the last deploy attempt on this host ended, in Unix seconds.")
ATTEMPT_INFO = ("rsdeploy_release_last_attempt_info",
                "The last deploy attempt on this host: version tag and result.")


def metrics_dir(hs: HostSettings) -> str:
    """The host directory of textfile metrics: node-exporter reads every ``*.prom`` file there.

    Example: ``metrics_dir(hs)`` -> ``"/var/lib/residency-scheduler/metrics"``
    """
    return f"{hs.stack.paths.data_dir}/metrics"


def stack_label(hs: HostSettings) -> str:
    """The ``stack`` label value: the stack's domain. Every host of one stack has the same
    domain (the loader refuses a difference) and no two deployments serve the same one, unlike
    ``environment`` (several stacks may be "production") or ``compose.project`` (docker layout
    only, and per host).

    Example: ``stack_label(hs)`` -> ``"scheduler.example.org"``
    """
    return hs.stack.domain


def render_metrics(stack: str, current: dict | None, last: dict | None) -> str:
    """The text of :data:`METRICS_FILE` (Prometheus text exposition format) for one host.

    ``current`` is the record of the last successful release, ``last`` that of the last
    attempt (the same record after a successful deploy); a missing record gives none of its
    metrics (no file content at all without either).

    Example::

        >>> record = {"version": "v1.1.0", "commit": "abc", "result": "ok",
        ...           "started": "2026-11-30T15:38:00Z", "ended": "2026-11-30T15:40:00Z"}
        >>> print(render_metrics("scheduler.example.org", record, record), end="")
        # HELP rsdeploy_release_info The release this host runs (last successful deploy): version tag and commit.
        # TYPE rsdeploy_release_info gauge
        rsdeploy_release_info{stack="scheduler.example.org",version="v1.1.0",commit="abc"} 1
        # HELP rsdeploy_release_deployed_timestamp_seconds When the last successful deploy of this host ended, in Unix seconds.
        # TYPE rsdeploy_release_deployed_timestamp_seconds gauge
        rsdeploy_release_deployed_timestamp_seconds{stack="scheduler.example.org"} 1796053200
        # HELP rsdeploy_release_last_attempt_success Whether the last deploy attempt on this host succeeded (1) or not (0).
        # TYPE rsdeploy_release_last_attempt_success gauge
        rsdeploy_release_last_attempt_success{stack="scheduler.example.org"} 1
        # HELP rsdeploy_release_last_attempt_timestamp_seconds When the last deploy attempt on this host ended, in Unix seconds.
        # TYPE rsdeploy_release_last_attempt_timestamp_seconds gauge
        rsdeploy_release_last_attempt_timestamp_seconds{stack="scheduler.example.org"} 1796053200
        # HELP rsdeploy_release_last_attempt_info The last deploy attempt on this host: version tag and result.
        # TYPE rsdeploy_release_last_attempt_info gauge
        rsdeploy_release_last_attempt_info{stack="scheduler.example.org",version="v1.1.0",result="ok"} 1
    """
    labels = {"stack": stack}
    lines: list[str] = []
    if current is not None:
        lines += _gauge(INFO, {**labels, "version": current["version"],
                               "commit": current["commit"]}, 1)
        lines += _gauge(DEPLOYED, labels, unix_seconds(current["ended"]))
    if last is not None:
        lines += _gauge(SUCCESS, labels, int(last["result"] == "ok"))
        lines += _gauge(ATTEMPTED, labels, unix_seconds(last["ended"]))
        lines += _gauge(ATTEMPT_INFO, {**labels, "version": last["version"],
                                       "result": last["result"]}, 1)
    return "".join(line + "\n" for line in lines)


def _gauge(family: tuple[str, str], labels: dict[str, str], value: int) -> list[str]:
    """A gauge's HELP, TYPE and one sample line."""
    name, help_text = family
    pairs = ",".join(f'{key}="{escape_label_value(value)}"' for key, value in labels.items())
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name}{{{pairs}}} {value}"]


def escape_label_value(value: str) -> str:
    """A label value for the text exposition format: backslash, double quote and line feed are
    the format's only escapes (a raw line feed would end the sample line).

    Example: ``escape_label_value('v1 "x"\\n')`` -> ``'v1 \\\\"x\\\\"\\\\n'``
    """
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def unix_seconds(timestamp: str) -> int:
    """Unix seconds of a record's ISO 8601 time, whole (alerts and dashboards compare deploys
    minutes apart). A time without an offset is UTC, as records are written.

    Example: ``unix_seconds("2026-11-30T15:40:00Z")`` -> ``1796053200``
    """
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())
