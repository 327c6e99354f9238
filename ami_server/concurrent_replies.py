"""Replies of ``concurrent`` actions: several outstanding per session, written in request order.

An action declared ``Action(..., concurrent=True)`` whose handler returns a
:class:`~ami_server.records.Deferred` does not hold up its session: the
session's :class:`~ami_server.session.Pipeline` becomes ``session.current``
and the core keeps dispatching the following requests (R-2.9 relaxed for
what may overlap, kept for what is written):

- Replies are written strictly in request order. A reply that completes
  before an earlier one waits, rendered, until every earlier reply is out.
  Errors answered without a handler (unknown action, permission denied, a
  parse error, a guard's refusal) take their place in the same order.
- Only concurrent actions run behind outstanding replies. Any other request
  (Ping, Logoff, Events, a blocking action...) is put back into the parser
  and dispatched once every earlier reply was written, as it would be
  behind any running action.
- Events that become deliverable to the session while any reply is
  outstanding are held (R-2.10) and written right after the next reply
  written -- the head-of-line one -- and before any later reply.
- Each run has its own timeout, counted from its dispatch; a run that timed
  out answers ``Action timed out`` in its place, and its late reply is dropped.
- A reply with ``close`` ends the session after it is written: the replies
  behind it are dropped, as is every outstanding reply when the session closes.
- A reply completed on the loop thread is written at once (if it is the
  head of line), not on a later loop turn, so that the replies and events an
  upstream sends in one read keep their order.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .context import ActionContext
from .protocol import Message, render_response
from .records import ActionError, Deferred, Response
from .session import AUTHENTICATED, ActionRun, Pipeline, Rendered, Session

if TYPE_CHECKING:  # pragma: no cover
    from .dispatch import Dispatcher

__all__ = ["ConcurrentReplies"]


class ConcurrentReplies:
    """The dispatcher's part for sessions with concurrent replies outstanding."""

    def __init__(self, dispatcher: "Dispatcher") -> None:
        self.dispatcher = dispatcher

    # -- requests behind outstanding replies ------------------------------------
    def dispatch(self, session: Session, pipeline: Pipeline, message: Message) -> None:
        """R-2.8 for a request behind outstanding replies: answer it in order, run it, or park it."""
        dispatcher = self.dispatcher
        action_id = message.action_id
        if message.error is not None:
            self.write(session, pipeline, render_response("Error", action_id, message.error))
            return
        if dispatcher.core.shutting_down:
            self.write(session, pipeline, render_response("Error", action_id, "Asterisk is shutting down"))
            return
        name = message.action
        if not name:
            if not message.empty:
                dispatcher.audit.security(session, "RequestBadFormat", extra=(("RequestType", "Action: NONE"),))
            self.write(session, pipeline, render_response("Error", action_id, "Missing action in request"))
            return
        entry = dispatcher.lookup(session, name) if session.state == AUTHENTICATED else None
        if entry is None and session.state == AUTHENTICATED:
            self.write(session, pipeline, dispatcher.unknown(session, name, action_id))
            return
        if entry is None or not entry.action.concurrent:
            # Runs once every earlier reply is written, dispatched afresh.
            session.parser.unread(message)
            pipeline.parked = True
            return
        action = entry.action
        if action.privileges and not action.privileges & session.write:
            dispatcher.deny(session, name, action_id)
            return
        run_name = action.name if entry is not dispatcher.router else name
        if dispatcher.guards and dispatcher._guarded(session, run_name, message):
            return
        audit = dispatcher.audits(entry, run_name)
        run = dispatcher.new_run(session, run_name, action_id, time.monotonic() if audit else 0.0, entry, audit)
        # Its place in line is taken before the handler runs: a handler may complete earlier replies.
        pipeline.order.append(run)
        pipeline.replies[run] = None
        context = ActionContext(message, session.info(), run, entry.config)
        try:
            result = action.handler(context)
        except ActionError as exc:
            result = exc.response
        except Exception as exc:  # noqa: BLE001 - R-2.12
            dispatcher.log_failure(session, run, exc)
            result = Response.error("Internal error")
        if session.closed or session.current is not pipeline:
            if isinstance(result, Deferred):
                result._cancel()
            return
        self._result(session, pipeline, run, result)

    def _result(self, session: Session, pipeline: Pipeline, run: ActionRun, result: Any) -> None:
        if isinstance(result, Response):
            self.answer(session, pipeline, run, result)
            return
        if not isinstance(result, Deferred):
            self.dispatcher.log_failure(
                session, run, TypeError(f"handler returned {type(result).__name__}, not a Response or Deferred"),
            )
            self.answer(session, pipeline, run, Response.error("Internal error"))
            return
        early = result._claim()
        if early is not None:
            self.complete(session, run, early)
            return
        dispatcher = self.dispatcher
        run.deferred = result
        run.timer = dispatcher.loop.call_later(dispatcher._timeout(run), lambda: dispatcher._timed_out(session, run))
        result._bind(lambda response: self.resolve(session, run, response))

    # -- replies ------------------------------------------------------------------
    def resolve(self, session: Session, run: ActionRun, response: Any) -> None:
        """A concurrent run's Deferred completed: on the loop at once, else handed to the loop."""
        dispatcher = self.dispatcher
        if dispatcher.loop.in_loop_thread():
            dispatcher.complete(session, run, response)
        else:
            dispatcher.loop.call_soon_threadsafe(lambda: dispatcher.complete(session, run, response))

    def complete(self, session: Session, run: ActionRun, response: Any) -> None:
        """The reply of ``run``, unless it is stale (timed out, the session moved on or closed)."""
        pipeline = session.current
        if session.closed or pipeline is None or pipeline.__class__ is not Pipeline or not pipeline.pending(run):
            return
        if run.deferred is not None:
            run.deferred._cancel()
        if not isinstance(response, Response):
            self.dispatcher.log_failure(
                session, run, TypeError(f"deferred completed with {type(response).__name__}, not a Response"),
            )
            response = Response.error("Internal error")
        self.answer(session, pipeline, run, response)

    def timed_out(self, session: Session, run: ActionRun) -> None:
        pipeline = session.current
        if session.closed or pipeline is None or pipeline.__class__ is not Pipeline or not pipeline.pending(run):
            return
        dispatcher = self.dispatcher
        dispatcher.log.warning("ActionTimedOut", action=run.name, session=session.session_id,
                               timeout=dispatcher._timeout(run))
        if run.deferred is not None:
            run.deferred._cancel()
        self.answer(session, pipeline, run, Response.error("Action timed out"))

    def answer(self, session: Session, pipeline: Pipeline, run: ActionRun, response: Response) -> None:
        """``run`` has its reply: keep it rendered, and write what is now at the head of the line."""
        if run.timer is not None:
            run.timer.cancel()
        pipeline.replies[run] = self._render(session, run, response)
        if pipeline.order and pipeline.order[0] is run:
            self._drain(session, pipeline)

    def write(self, session: Session, pipeline: Pipeline, data: bytes) -> None:
        """A reply answered without a handler (an error): in line behind the outstanding ones."""
        pipeline.order.append(data)
        if len(pipeline.order) == 1:
            self._drain(session, pipeline)

    def _render(self, session: Session, run: ActionRun, response: Response) -> Rendered:
        """The reply as bytes now (a later reply waits rendered); an invalid one is ``Internal error``."""
        action_id = run.action_id
        try:
            parts, completion = response.render_parts(action_id)
        except Exception as exc:  # noqa: BLE001 - R-2.12: nothing of an invalid reply is written
            self.dispatcher.log_failure(session, run, exc)
            error = Response.error("Internal error")
            return [render_response("Error", action_id, "Internal error")], b"", error
        if completion and not response.events_before_completion:
            parts.append(completion)
            completion = b""
        return parts, completion, response

    def _drain(self, session: Session, pipeline: Pipeline) -> None:
        """Write every reply at the head of the line that is ready; held events follow the first (R-2.10)."""
        dispatcher = self.dispatcher
        outbox = dispatcher.outbox
        order = pipeline.order
        replies = pipeline.replies
        while order:
            head = order[0]
            if head.__class__ is bytes:
                order.popleft()
                outbox.settle_for(session)  # events published before it are held, and follow it
                outbox.reply(session, [head], b"", False)  # type: ignore[list-item]
                continue
            done = replies.get(head)  # type: ignore[call-overload]
            if done is None:
                return  # the head of the line is still outstanding
            order.popleft()
            del replies[head]  # type: ignore[arg-type]
            parts, completion, response = done
            outbox.settle_for(session)
            outbox.reply(session, parts, completion, response.close)
            if head.audit:  # type: ignore[union-attr]
                dispatcher.audit.executed(session, head, response)  # type: ignore[arg-type]
            if dispatcher.observe is not None:
                dispatcher.observe(head.name, response.status, head.started)  # type: ignore[union-attr]
            if response.close:
                pipeline.cancel()  # the replies behind it are never written
                session.current = None
                dispatcher.core.close_after_flush(session, session.close_reason or "logoff")
                return
        session.current = None
        dispatcher.core.resume_soon(session)  # a parked request, further input, or the end of input

