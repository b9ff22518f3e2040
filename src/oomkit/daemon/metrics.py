"""Prometheus metrics of the running daemon: ``[daemon] metrics`` and ``metrics_textfile``.

Nothing is counted here: every number is read from the document ``oomkit
status`` shows (:class:`oomkit.daemon.status.DaemonStatus`, built from the
daemon's :class:`~oomkit.daemon.status.StatusBook` each time it changes), so
the two never disagree.  The exporter keeps the latest document and turns it
into metric families when scraped (prometheus_client's HTTP server runs on its
own thread; the document is replaced whole, never changed in place), and
writes the node_exporter textfile after each document (after each OOM's
record, at start and reload).

prometheus_client is the optional ``metrics`` extra: this module is imported
only when the config asks for metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oomkit.daemon.files import remove_file, replace_file
from oomkit.daemon.status import BUCKETS, DaemonStatus, Timings
from oomkit.errors import ConfigError
from oomkit.text import for_record

log = logging.getLogger("oomkit")

try:
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
        Metric,
    )
except ImportError as exc:      # the extra is not installed
    raise ConfigError("[daemon] metrics and metrics_textfile need the prometheus_client library",
                      hint="pip install 'oomkit[metrics]'") from exc


def _label(text: str) -> str:
    # prometheus_client escapes \, " and newlines; a name that was not UTF-8 would
    # fail to encode at all: \xNN, as the event log writes it.
    return for_record(text)


def _histogram(name: str, doc: str, t: Timings) -> HistogramMetricFamily:
    buckets, total = [], 0
    for bound, n in zip([*map(str, BUCKETS), "+Inf"], t.counts, strict=True):
        total += n
        buckets.append((bound, total))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=t.sum)


def families(st: DaemonStatus) -> list[Metric]:
    """The metric families of one status document (plain: no I/O)."""
    info = InfoMetricFamily("oomkit_build", "The running oomkit: version, cgroup hierarchy, task reader.")
    info.add_metric([], {"version": st.version, "hierarchy": st.hierarchy, "task_reader": st.task_reader})
    ooms = CounterMetricFamily("oomkit_ooms", "OOMs handled, by level (memcg, global, numa) and how each "
                               "was resolved (policy, backoff, kernel, unresolved).", labels=["level", "resolution"])
    for key, n in sorted(st.ooms_by.items()):
        level, _, resolution = key.partition("/")
        ooms.add_metric([level, resolution], n)
    kills = CounterMetricFamily("oomkit_kills", "Tasks killed, by who decided: a policy, or the kernel's "
                                "OOM killer.", labels=["decided_by"])
    by: dict[str, int] = {"policy": 0, "kernel": 0}
    for who, n in st.kills_by.items():
        kind = "policy" if who.startswith("policy:") else "kernel"
        by[kind] = by.get(kind, 0) + n
    for kind, n in sorted(by.items()):
        kills.add_metric([kind], n)
    out: list[Metric] = [
        info, ooms, kills,
        _histogram("oomkit_handler_seconds", "Wall time of each policy handler's run in an OOM.",
                   st.handler_seconds),
        _histogram("oomkit_oom_seconds", "Time from an OOM's detection to its resolution.", st.oom_seconds),
        CounterMetricFamily("oomkit_handler_failures", "Policy handler failures (errors, overruns, bad "
                            "verdicts), every attachment.", value=st.failures),
        CounterMetricFamily("oomkit_ejections", "Policies ejected after repeated failures.", value=st.ejections),
        CounterMetricFamily("oomkit_event_log_errors", "Event-log writes that failed.", value=st.event_log_errors),
        CounterMetricFamily("oomkit_reload_failures", "Reloads refused (the running config kept).",
                            value=st.reload_failures),
        CounterMetricFamily("oomkit_internal_errors", "Bugs of oomkit's own the daemon's loop contained "
                            "by restarting its live stack.", value=st.internal_errors),
        GaugeMetricFamily("oomkit_managed_cgroups", "Cgroups the daemon manages.", value=len(st.managed)),
        GaugeMetricFamily("oomkit_dry_run", "1 if nothing is released (dry run).", value=int(st.dry_run)),
    ]
    out += _per_attachment(st)
    return out


def _per_attachment(st: DaemonStatus) -> Iterator[Metric]:
    labels = ["cgroup", "policy"]
    attached = GaugeMetricFamily("oomkit_attachment", "1 for each attached cgroup, with its policy.", labels=labels)
    ejected = GaugeMetricFamily("oomkit_attachment_ejected", "1 if the attachment's policy was ejected.",
                                labels=labels)
    ooms = CounterMetricFamily("oomkit_attachment_ooms", "OOMs in which this attachment's handler ran.",
                               labels=labels)
    kills = CounterMetricFamily("oomkit_attachment_kills", "Tasks killed on this attachment's decision.",
                                labels=labels)
    failures = CounterMetricFamily("oomkit_attachment_failures", "This attachment's handler failures.",
                                   labels=labels)
    for a in st.attachments:
        key = [_label(a.cgroup), _label(a.policy)]
        attached.add_metric(key, 1)
        ejected.add_metric(key, int(a.ejected))
        ooms.add_metric(key, a.ooms)
        kills.add_metric(key, a.kills)
        failures.add_metric(key, a.failures)
    yield from (attached, ejected, ooms, kills, failures)


class _Collector:
    """What a scrape reads: the exporter's latest document."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        st = self.exporter.latest
        if st is not None:
            yield from families(st)


class Exporter:
    """``/metrics`` on ``address`` (host, port), and/or the textfile, of the latest status."""

    def __init__(self, address: tuple[str, int] | None, textfile: str | None) -> None:
        self.address, self.textfile = address, textfile
        self.latest: DaemonStatus | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        """Listen now (a port in use is a config error at start, not a silent gap)."""
        if self.address is None:
            return
        host, port = self.address
        # The daemon's own memory and CPU (process_*), on the HTTP endpoint only:
        # in the textfile they would be node_exporter's figures, long after.
        served = CollectorRegistry(auto_describe=False)
        served.register(_Collector(self))
        ProcessCollector(registry=served)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=served)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                              where="daemon.metrics") from None
        log.info("oomkit: metrics on http://%s/metrics", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def update(self, st: DaemonStatus) -> None:
        self.latest = st
        if self.textfile is not None:
            write_textfile(self.textfile, generate_latest(self.registry))

    def close(self) -> None:
        """Stop serving; the textfile goes too (a stopped daemon's counts are not
        the running machine's: alert on ``absent(oomkit_build_info)``)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.textfile is not None and self.latest is not None:
            remove_file(self.textfile, "the metrics textfile")


def write_textfile(path: str | Path, data: bytes) -> None:
    """``path`` whole or not at all (a temporary file, then ``rename``), 0644 for
    node_exporter; never followed through a symlink.  An error is logged, not
    raised: handling OOMs does not depend on it."""
    path = Path(path)
    try:    # 0644 whatever the umask (the unit's is 0077); not *.prom: node_exporter skips it
        replace_file(path, data, 0o644, f".{path.name}.{os.getpid()}.tmp")
    except OSError as exc:
        log.warning("oomkit: could not write the metrics textfile %s (%s)", path, exc.strerror or exc)


