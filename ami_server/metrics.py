"""Metrics: plain counters kept on the loop, turned into Prometheus families at scrape time.

Everything here runs on the loop thread -- the counters are updated there
and ``/metrics`` is answered there -- so no lock is ever taken. Counters the
server already keeps (sessions, events published, slow consumers, worker
queues) are read when scraped through :class:`AMICollector`, a custom
``prometheus_client`` collector; only what nothing counted before (actions
by name and result with their latency, logins by reason, auth backend
latency, events by class) is counted by :class:`MetricsRecorder`, and only
while ``[http]`` is enabled.
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from .health import Metric
from .privileges import format_privilege

if TYPE_CHECKING:  # pragma: no cover
    from .server import Server

__all__ = ["MetricsRecorder", "AMICollector", "ACTION_BUCKETS", "AUTH_BUCKETS", "MAX_ACTION_NAMES"]

#: Histogram bucket bounds (seconds) of action latency: a Ping takes microseconds, a plugin seconds.
ACTION_BUCKETS: Tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
#: Bucket bounds of authentication backend latency (scrypt takes ~50 ms, an LDAP round trip more).
AUTH_BUCKETS: Tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Distinct action names tracked; more (a router forwarding whatever clients send) count as ``other``.
MAX_ACTION_NAMES = 256
#: Distinct login failure reasons tracked (reasons come from plugins).
MAX_REASONS = 64


class _Histogram:
    """Bucket counts, a sum and a count; :meth:`observe` is a bisect and three additions."""

    __slots__ = ("bounds", "buckets", "sum", "count")

    def __init__(self, bounds: Tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> List[Tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip(self.bounds, self.buckets):
            total += count
            out.append((_float_text(bound), total))
        out.append(("+Inf", self.count))
        return out


def _float_text(value: float) -> str:
    return repr(float(value))


class MetricsRecorder:
    """The counters nothing else keeps; fed by the dispatcher, login policy, audit and bus."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.actions: Dict[Tuple[str, str], int] = {}
        self.action_latency: Dict[str, _Histogram] = {}
        self.logins: Dict[Tuple[str, str], int] = {}
        self.auth_latency: Dict[str, _Histogram] = {}
        self.auth_errors: Dict[str, int] = {}
        self.sessions_closed: Dict[str, int] = {}
        self.http_requests: Dict[Tuple[str, int], int] = {}
        #: Event classes (bit masks) -> events published; the bus's own dict.
        self.published: Dict[int, int] = {}

    # -- fed from the dispatcher (hot: one dict update and one histogram observation) --
    def action(self, name: str, result: str, started: float) -> None:
        """An action answered: ``result`` is the response status, or ``denied``."""
        key = (name, result)
        actions = self.actions
        if key in actions:
            actions[key] += 1
        else:
            if name not in self.action_latency and len(self.action_latency) >= MAX_ACTION_NAMES:
                name, key = "other", ("other", result)
            actions[key] = actions.get(key, 0) + 1
        if started:
            histogram = self.action_latency.get(name)
            if histogram is None:
                histogram = self.action_latency[name] = _Histogram(ACTION_BUCKETS)
            histogram.observe(self.clock() - started)

    # -- fed from the audit trail (every SessionAudit.record) ----------------------------
    def audit(self, record: str, fields: Dict[str, Any]) -> None:
        if record == "LoginSucceeded":
            self._login("success", "accepted")
        elif record == "LoginFailed":
            self._login("failure", str(fields.get("reason") or "rejected"))
        elif record == "AuthBackendError":
            backend = str(fields.get("backend") or "none")
            self.auth_errors[backend] = self.auth_errors.get(backend, 0) + 1
        elif record == "SessionClosed":
            reason = str(fields.get("reason") or "")
            self.sessions_closed[reason] = self.sessions_closed.get(reason, 0) + 1

    def _login(self, outcome: str, reason: str) -> None:
        key = (outcome, reason)
        if key not in self.logins and len(self.logins) >= MAX_REASONS:
            key = (outcome, "other")
        self.logins[key] = self.logins.get(key, 0) + 1

    # -- fed from the login policy ------------------------------------------------------
    def auth(self, backend: Optional[str], seconds: float) -> None:
        """The backend chain answered (or timed out) after ``seconds``."""
        name = backend or "none"
        histogram = self.auth_latency.get(name)
        if histogram is None:
            histogram = self.auth_latency[name] = _Histogram(AUTH_BUCKETS)
        histogram.observe(seconds)

    def http(self, path: str, status: int) -> None:
        key = (path, status)
        self.http_requests[key] = self.http_requests.get(key, 0) + 1


class AMICollector:
    """A ``prometheus_client`` collector reading the server's state when scraped (on the loop)."""

    def __init__(self, server: "Server", recorder: MetricsRecorder, loop_lag: Any) -> None:
        self.server = server
        self.recorder = recorder
        self.loop_lag = loop_lag

    def describe(self) -> List[Any]:
        return []  # no registration-time collection (it would run off the loop)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        server, rec = self.server, self.recorder
        core = server.core

        sessions = GaugeMetricFamily("ami_sessions", "Open AMI sessions by state and transport.",
                                     labels=["state", "transport"])
        counts: Dict[Tuple[str, str], int] = {}
        queued_sum = queued_max = 0
        for session in core.sessions.values():
            if not session.opened:
                key = ("handshake", session.transport)
            else:
                key = (str(session.state).lower(), session.transport)
            counts[key] = counts.get(key, 0) + 1
            queued = len(session.out) + session.pending_bytes
            queued_sum += queued
            if queued > queued_max:
                queued_max = queued
        for transport in ("TCP", "TLS"):
            for state in ("preauth", "authenticated", "closing"):
                counts.setdefault((state, transport), 0)
        for (state, transport), value in sorted(counts.items()):
            sessions.add_metric([state, transport], value)
        yield sessions
        yield _counter(CounterMetricFamily, "ami_sessions_accepted", "Connections accepted as sessions.",
                       core.stats["sessions_accepted"])
        closed = CounterMetricFamily("ami_sessions_closed", "Sessions closed, by reason.", labels=["reason"])
        for reason, value in sorted(rec.sessions_closed.items()):
            closed.add_metric([reason], value)
        yield closed

        logins = CounterMetricFamily("ami_logins", "Login attempts by outcome and reason.",
                                     labels=["outcome", "reason"])
        for (outcome, reason), value in sorted(rec.logins.items()):
            logins.add_metric([outcome, reason], value)
        yield logins

        actions = CounterMetricFamily("ami_actions", "Actions answered, by action and result "
                                      "(Success, Error, Goodbye, ... or denied).", labels=["action", "result"])
        for (name, result), value in sorted(rec.actions.items()):
            actions.add_metric([name, result], value)
        yield actions
        latency = HistogramMetricFamily("ami_action_duration_seconds",
                                        "Time from dispatch to reply, by action.", labels=["action"])
        for name, histogram in sorted(rec.action_latency.items()):
            latency.add_metric([name], histogram.cumulative(), histogram.sum)
        yield latency

        published = CounterMetricFamily("ami_events_published", "Events published on this node, by class.",
                                        labels=["class"])
        for classes, value in sorted(_by_class(rec.published).items()):
            published.add_metric([classes], value)
        yield published
        delivered = CounterMetricFamily("ami_events_delivered",
                                        "Event copies appended to sessions' output, by class.", labels=["class"])
        for classes, value in sorted(_by_class(core.outbox.delivered).items()):
            delivered.add_metric([classes], value)
        yield delivered
        yield _counter(CounterMetricFamily, "ami_events_injected", "Events delivered from other nodes.",
                       server.bus.injected)
        yield _counter(CounterMetricFamily, "ami_events_dropped",
                       "Events lost because their session was cut off as a slow consumer.",
                       core.stats["events_dropped"])
        yield _counter(CounterMetricFamily, "ami_slow_consumer_disconnects",
                       "Sessions cut off for exceeding output_queue_limit.",
                       core.stats["slow_consumer_disconnects"])
        yield GaugeMetricFamily("ami_output_queued_bytes_max", "Largest unsent output of one session (bytes).",
                                value=queued_max)
        yield GaugeMetricFamily("ami_output_queued_bytes_sum", "Unsent output of all sessions (bytes).",
                                value=queued_sum)
        yield GaugeMetricFamily("ami_output_queue_limit_bytes", "output_queue_limit in force.",
                                value=core.outbox.limit)

        auth = HistogramMetricFamily("ami_auth_backend_duration_seconds",
                                     "Time the authentication chain took per Login, by deciding backend.",
                                     labels=["backend"])
        for name, histogram in sorted(rec.auth_latency.items()):
            auth.add_metric([name], histogram.cumulative(), histogram.sum)
        yield auth
        errors = CounterMetricFamily("ami_auth_backend_errors", "Backend failures, timeouts and nonsense answers.",
                                     labels=["backend"])
        for name, value in sorted(rec.auth_errors.items()):
            errors.add_metric([name], value)
        yield errors

        depth = GaugeMetricFamily("ami_worker_queue_depth", "Jobs waiting for a worker thread.", labels=["pool"])
        threads = GaugeMetricFamily("ami_worker_threads", "Worker threads started.", labels=["pool"])
        refused = CounterMetricFamily("ami_worker_refused", "Jobs refused because the queue was full.",
                                      labels=["pool"])
        for pool, workers in (("actions", server.workers), ("auth", server.auth_workers)):
            depth.add_metric([pool], workers.queued)
            threads.add_metric([pool], workers.threads)
            refused.add_metric([pool], workers.stats["refused"])
        yield depth
        yield threads
        yield refused

        reloads = CounterMetricFamily("ami_reloads", "Configuration reloads by outcome.", labels=["outcome"])
        for outcome, value in sorted(server.ops.reloads.items()):
            reloads.add_metric([outcome], value)
        yield reloads
        yield GaugeMetricFamily("ami_start_time_seconds", "Start time, Unix seconds.", value=server.started_wall)
        yield GaugeMetricFamily("ami_last_reload_time_seconds", "Last reload (or start) time, Unix seconds.",
                                value=server.reloaded_wall)
        yield GaugeMetricFamily("ami_shutting_down", "1 while the server drains before exiting.",
                                value=1 if core.shutting_down else 0)
        yield GaugeMetricFamily("ami_loop_lag_seconds",
                                "How late the loop's 1-second heartbeat timer last ran.", value=self.loop_lag())
        http = CounterMetricFamily("ami_http_requests", "Requests to the [http] listener, by path and status.",
                                   labels=["path", "status"])
        for (path, status), value in sorted(rec.http_requests.items()):
            http.add_metric([path, str(status)], value)
        yield http
        yield from self._plugin_metrics(GaugeMetricFamily, CounterMetricFamily)

    def _plugin_metrics(self, gauge: Any, counter: Any) -> Iterator[Any]:
        for plugin, source in self.server.ops.sources:
            try:
                metrics = list(source())
            except Exception as exc:  # noqa: BLE001 - one plugin must not break the scrape
                self.server.log.error("MetricsSourceFailed", plugin=plugin, error=repr(exc), exc_info=exc)
                continue
            for metric in metrics:
                if not isinstance(metric, Metric):
                    continue
                labels = sorted({key for labels, _ in metric.samples for key in labels})
                name = metric.name[:-6] if metric.kind == "counter" and metric.name.endswith("_total") else metric.name
                family = (counter if metric.kind == "counter" else gauge)(name, metric.help, labels=labels)
                for sample_labels, value in metric.samples:
                    family.add_metric([str(sample_labels.get(key, "")) for key in labels], value)
                yield family


def _counter(kind: Any, name: str, text: str, value: float) -> Any:
    return kind(name, text, value=value)


def _by_class(counts: Dict[int, int]) -> Dict[str, int]:
    """Class bit masks -> their ``Privilege:`` text (an event of two classes counts under both names)."""
    out: Dict[str, int] = {}
    for mask, value in counts.items():
        label = format_privilege(mask).replace(",all", "")
        out[label] = out.get(label, 0) + value
    return out
