"""One node of the cluster, on the event loop: what leaves for Redis, what arrives from it.

The bus subscriber decides per event whether it leaves the node (local
publications only; never what was injected from elsewhere, never the
names and headers configured to stay local, security events only if
asked) and queues it for the writer thread in O(1). Batches from the
reader thread are injected in stream order, which keeps each publishing
node's order; gaps in a publisher's sequence numbers are the events lost
beyond the stream's retention, audited and announced as
``ClusterEventsLost``.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from ami_server import Event, ServerHandle
from ami_server.events import SECURITY_EVENT_NAMES

from .config import ClusterConfig
from .link import Inbound, RedisLink
from .sessions import Sessions

__all__ = ["ClusterNode"]

#: Events about this node only: never forwarded, whatever the configuration says.
OWN_EVENTS = frozenset({"clustereventslost"})
#: How long the Redis threads may keep sending after the server began to stop (releases of claims).
STOP_LINGER = 3.0


class ClusterNode:
    """The cluster plugin's state for one server."""

    def __init__(self, server: ServerHandle, config: ClusterConfig) -> None:
        self.server = server
        self.config = config
        self.log = server.log
        self.bus = server.bus
        self.link = RedisLink(config, server.call_soon_threadsafe, self._inbound, self._state)
        self.sessions = Sessions(self)
        self._forward: Dict[str, bool] = {}
        self._local_headers = config.local_headers
        self.forwarded = 0
        self.dropped = 0
        self._dropped_reported = 0
        self.received = 0
        self.lost = 0
        self._up: Dict[str, bool] = {}
        self._stopping_since: Optional[float] = None

    def start(self) -> None:
        self.log.info("ClusterStarting", node=self.config.node, redis=self.config.safe_url(),
                      stream=self.config.events_stream)
        self.link.start()
        self.server.call_later(0, self._tick)

    # -- outgoing -------------------------------------------------------------------
    def on_event(self, event: Event, local: bool) -> None:
        """Bus subscriber: queue a local publication for the other nodes (never blocks)."""
        if not local:
            return
        name = event.name
        forward = self._forward.get(name)
        if forward is None:
            forward = self._forward[name] = self._forwards(name)
        if not forward:
            return
        if self._local_headers:
            local_headers = self._local_headers
            for header, _ in event.headers:
                if header.lower() in local_headers:
                    return
        if self.link.offer(event):
            self.forwarded += 1
        else:
            self.dropped += 1

    def _forwards(self, name: str) -> bool:
        lowered = name.lower()
        if lowered in OWN_EVENTS or lowered in self.config.local_events:
            return False
        return self.config.forward_security_events or name not in SECURITY_EVENT_NAMES

    # -- incoming (reader thread -> loop) --------------------------------------------
    def _inbound(self, batch: Inbound) -> None:
        inject = self.bus.inject
        for event in batch.events:
            inject(event)
        self.received += len(batch.events)
        if batch.reset:
            self.log.warning("ClusterStreamReset", node=self.config.node,
                             detail="Redis lost the event stream (restart without persistence?)")
        for publisher, count in batch.lost:
            self.lost += count
            self.log.warning("ClusterEventsLost", node=self.config.node, publisher=publisher, count=count)
            self.bus.publish(Event("ClusterEventsLost", "system", (("Node", publisher), ("Count", str(count)))))
        for message in batch.control:
            self.sessions.on_control(message)

    def _state(self, which: str, up: bool, detail: str) -> None:
        if self._up.get(which) == up:
            return
        self._up[which] = up
        if up:
            self.log.info("ClusterRedisUp", node=self.config.node, link=which, redis=self.config.safe_url())
        else:
            self.log.warning("ClusterRedisDown", node=self.config.node, link=which, redis=self.config.safe_url(),
                             error=detail, queued=len(self.link.outgoing))

    # -- periodic work ------------------------------------------------------------------
    def _tick(self) -> None:
        """Every third of the TTL: heartbeat, claim refresh, drop audit; stop the threads after shutdown."""
        if self.server.status().shutting_down:
            if self._stopping_since is None:
                self._stopping_since = time.monotonic()
                # The loop stops soon: let the threads send the claims' releases, then end.
                self.link.stop_later(STOP_LINGER)
            return
        self.sessions.refresh()
        if self.dropped != self._dropped_reported:
            self.log.warning("ClusterEventsDropped", node=self.config.node,
                             count=self.dropped - self._dropped_reported, total=self.dropped,
                             limit=self.config.publish_queue_limit)
            self._dropped_reported = self.dropped
        self.server.call_later(min(self.config.session_ttl / 3, 1.0), self._tick)

    def stats(self) -> Dict[str, Any]:
        return {
            "Node": self.config.node,
            "Forwarded": self.forwarded,
            "Sent": self.link.sent,
            "Queued": len(self.link.outgoing),
            "Dropped": self.dropped,
            "Received": self.received,
            "Lost": self.lost,
            "RedisUp": all(self._up.get(w, False) for w in ("writer", "reader")),
        }
