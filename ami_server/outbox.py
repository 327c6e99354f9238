"""What goes into each session's output, and in which order (R-2.9, R-2.10, Q-7.2 to Q-7.7).

Three kinds of bytes reach a session: replies, events held while its
action ran, and broadcast batches. Published events are not appended at
once: they wait in one batch until the end of the loop turn -- or until a
session that receives them writes, starts or ends an action, or changes
(:meth:`Outbox.settle`) -- so that a burst reaches each recipient as one
append, and never after something written later.

A session with concurrent replies outstanding (``session.current`` is a
:class:`~ami_server.session.Pipeline`) counts as running an action here:
its events are held and written after the next reply written, the oldest
outstanding one (:mod:`ami_server.concurrent_replies`).

The output limit has two meanings, both here: a session whose unsent
output exceeds it stops being dispatched until it drains (Q-7.7,
:meth:`Outbox.paused`), and an event that would take it past the limit
cuts the session off as a slow consumer (Q-7.6, ``on_overflow``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from .session import AUTHENTICATED, ActionRun, Session

__all__ = ["Outbox"]


def _ignore(session: Session) -> None:
    pass


def _ignore_run(session: Session, run: ActionRun) -> None:
    pass


class Outbox:
    """The output side of every session of one server."""

    __slots__ = ("limit", "dirty", "batch", "batch_classes", "recipients", "on_overflow", "on_held", "delivered")

    def __init__(self, limit: int, recipients: Dict[int, Session]) -> None:
        #: ``output_queue_limit``: bytes of unsent output per session.
        self.limit = limit
        #: Sessions whose output went from empty to non-empty this turn (sent by :meth:`flush`).
        self.dirty: List[Session] = []
        #: Events published and not yet delivered, as (classes, bytes), and the union of their classes.
        self.batch: List[Tuple[int, bytes]] = []
        self.batch_classes = 0
        #: The sessions events are delivered to (the authenticated ones), by key.
        self.recipients = recipients
        #: Called for a slow consumer (Q-7.6): it must close the session.
        self.on_overflow: Callable[[Session], None] = _ignore
        #: Called when an event is held for a session whose WaitEvent it ends (B-5.11).
        self.on_held: Callable[[Session, ActionRun], None] = _ignore_run
        #: Event copies handed to sessions, by class mask (counted per batch, read by metrics).
        self.delivered: Dict[int, int] = {}

    # -- writing --------------------------------------------------------
    def write(self, session: Session, data: bytes) -> None:
        """Append ``data`` to the session's output, after the events published before it."""
        if session.closed:
            return
        if self.batch and session.receives & self.batch_classes:
            self.deliver_batch()  # events published earlier go first
        if not session.out:
            self.dirty.append(session)
        session.out += data

    def settle(self) -> None:
        """Deliver the batch before a session's state changes (state, classes, mask, filters, action)."""
        if self.batch:
            self.deliver_batch()

    def settle_for(self, session: Session) -> None:
        """Deliver the batch if ``session`` receives any of it (before its action starts or ends)."""
        if self.batch and session.receives & self.batch_classes:
            self.deliver_batch()

    def paused(self, session: Session) -> bool:
        """Q-7.7: dispatching waits while the unsent output is over the limit."""
        return len(session.out) > self.limit

    def reply(self, session: Session, parts: List[bytes], completion: bytes, close: bool) -> None:
        """Write a reply with its blocks, then the events held meanwhile, then ``completion``."""
        if close:
            session.pending.clear()
            session.pending_bytes = 0
        elif session.state == AUTHENTICATED and session.pending:
            parts.extend(session.pending)
            session.pending.clear()
            session.pending_bytes = 0
        if completion:
            parts.append(completion)
        self.write(session, b"".join(parts))

    # -- events ---------------------------------------------------------
    def add(self, classes: int, data: bytes) -> None:
        """Queue one rendered event for delivery at the end of the turn (or the next settle)."""
        self.batch.append((classes, data))
        self.batch_classes |= classes

    def deliver_batch(self) -> None:
        """Deliver the batch, in publication order, to every session that receives it.

        The common recipient -- idle, no filters, receiving every class
        published, well under its limit -- gets them all as one append; any
        other takes them one by one exactly as :meth:`deliver` decides.
        """
        while self.batch:
            entries, self.batch = self.batch, []
            union, self.batch_classes = self.batch_classes, 0
            joined = entries[0][1] if len(entries) == 1 else b"".join([data for _, data in entries])
            size = len(joined)
            limit = self.limit
            dirty = self.dirty
            others: List[Session] = []
            skipped = 0
            recipients = self.recipients
            # The hot loop: a recipient that takes the joined batch costs no count.
            for session in recipients.values():
                receives = session.receives
                if not receives & union:
                    skipped += 1
                    continue  # none of its classes, or not (any more) authenticated
                if receives & union == union and session.filters is None:
                    out = session.out
                    if session.current is None and len(out) + size <= limit:
                        if not out:
                            dirty.append(session)
                        out += joined
                        continue
                others.append(session)
            whole = len(recipients) - skipped - len(others)
            delivered = self.delivered
            if whole:
                for classes, _ in entries:
                    delivered[classes] = delivered.get(classes, 0) + whole
            # A pattern that several sessions share is searched once per event (EventFilters.passes).
            memos: List[Optional[Dict[Any, bool]]] = [None] * len(entries) if others else []
            for session in others:
                filters = session.filters
                for index, (classes, data) in enumerate(entries):
                    if session.closed:
                        break
                    if session.receives & classes != classes:
                        continue
                    if filters is not None:
                        memo = memos[index]
                        if memo is None:
                            memo = memos[index] = {}
                        if not filters.passes(data, memo):
                            continue
                    if self.deliver(session, data):
                        delivered[classes] = delivered.get(classes, 0) + 1

    def deliver(self, session: Session, data: bytes) -> bool:
        """Append one event to the output, or to the held list while an action runs (Q-7.4)."""
        if session.closed or session.state != AUTHENTICATED:
            return False
        if len(session.out) + session.pending_bytes + len(data) > self.limit:
            self.on_overflow(session)
            return False
        run = session.current
        if run is None:
            self.write(session, data)
            return True
        session.pending.append(data)
        session.pending_bytes += len(data)
        if run.wait_reply is not None:
            self.on_held(session, run)
        return True

    # -- end of a loop turn -------------------------------------------------
    def flush(self) -> None:
        """Deliver the batch and hand every session's new output to its transport."""
        while self.dirty or self.batch:
            if self.batch:
                self.deliver_batch()
            dirty, self.dirty = self.dirty, []
            for session in dirty:
                if not session.closed:
                    session.link.send()
