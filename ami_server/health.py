"""What plugins contribute to ``/healthz`` and ``/metrics``, and the registry that holds it.

A module without sockets or ``prometheus_client``: a plugin registers its
checks and metrics through :class:`~ami_server.ServerHandle` whether or not
the ``[http]`` listener is on (or ``prometheus_client`` installed), and the
records it returns are plain frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Sequence, Tuple, Union

__all__ = ["Health", "Metric", "OpsRegistry", "HealthCheck", "MetricSource"]


@dataclass(frozen=True)
class Health:
    """A health check's answer: ``ok``, and a short reason shown in ``/healthz`` (never a secret)."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Metric:
    """One metric family a plugin contributes: ``kind`` is ``gauge`` or ``counter``.

    ``samples`` holds ``(labels, value)`` pairs; a counter's name ends in
    ``_total`` (the exposition adds it if missing). Name it
    ``ami_<plugin>_...`` so that it cannot clash with the server's.
    """

    name: str
    kind: str
    help: str
    samples: Tuple[Tuple[Mapping[str, str], float], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in ("gauge", "counter"):
            raise ValueError(f"metric kind must be 'gauge' or 'counter', not {self.kind!r}")


#: A health check: called on the loop at each ``/healthz`` request; must not block.
HealthCheck = Callable[[], Union[Health, bool]]
#: A metric source: called on the loop at each scrape; must not block.
MetricSource = Callable[[], Sequence[Metric]]


@dataclass(frozen=True)
class _Check:
    name: str
    check: HealthCheck
    required: bool


class OpsRegistry:
    """Health checks and metric sources of the plugins, and reload outcomes (always kept: rare, cheap)."""

    def __init__(self) -> None:
        self.checks: List[_Check] = []
        self.sources: List[Tuple[str, MetricSource]] = []
        self.reloads: Dict[str, int] = {"ok": 0, "failed": 0}

    def add_check(self, name: str, check: HealthCheck, required: bool = True) -> None:
        """A failing ``required`` check turns ``/healthz`` into 503; others are only reported."""
        if any(c.name == name for c in self.checks):
            raise ValueError(f"a health check named {name!r} is already registered")
        self.checks.append(_Check(name, check, required))

    def add_source(self, plugin: str, source: MetricSource) -> None:
        self.sources.append((plugin, source))
