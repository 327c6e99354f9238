"""The dialplan interpreter and the Dial application, mixed into :class:`~.core.Simulator`.

Each step runs to completion at once or returns how long the channel waits
before the next one, so a channel is never a thread or a coroutine: a call
costs a few objects and at most one pending timer.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from .channels import BUSY, DOWN, RING, RINGING, UP, Channel
from .config import Step

FOREVER = -1.0  # the step blocks until something else moves the channel (Echo, Dial, Busy)

_DIAL_VARS = ("DIALSTATUS", "DIALEDPEERNUMBER", "DIALEDPEERNAME", "ANSWEREDTIME", "ANSWEREDTIME_MS",
              "DIALEDTIME", "DIALEDTIME_MS", "RINGTIME", "RINGTIME_MS", "PROGRESSTIME", "PROGRESSTIME_MS")


class DialRun:
    """One Dial() placed by ``caller``: its callee, timer and outcome."""

    __slots__ = ("caller", "callee", "dialstring", "target", "started", "answered_at", "timer",
                 "answered", "finished", "bridge")

    def __init__(self, caller: Channel, target: str, dialstring: str, started: float) -> None:
        self.caller = caller
        self.callee: Optional[Channel] = None
        self.target = target
        self.dialstring = dialstring
        self.started = started
        self.answered_at = 0.0
        self.timer: Any = None
        self.answered = False
        self.finished = False
        self.bridge: Any = None


class Interpreter:
    """Runs dialplan steps on channels; expects the :class:`~.core.Simulator` members."""

    # -- running steps ----------------------------------------------------------
    def run_pbx(self: Any, ch: Channel, steps: Tuple[Step, ...], context: str, exten: str, priority: int,
                first_hook: Optional[Callable[[], None]] = None) -> None:
        ch.in_pbx = True
        ch.program = steps
        ch.context, ch.exten, ch.priority = context, exten, priority
        ch.step = priority - 1
        ch.touch()
        self.continue_channel(ch, first_hook)

    def continue_channel(self: Any, ch: Channel, hook: Optional[Callable[[], None]] = None) -> None:
        """Run steps until one waits; the dialplan's end hangs the channel up (cause 16)."""
        while not ch.gone:
            if ch.step >= len(ch.program):
                self.hangup(ch, 16)
                return
            step = ch.program[ch.step]
            ch.step += 1
            ch.app, ch.appdata = step.app, step.data
            if ch.in_pbx:
                ch.priority = ch.step
                ch.touch()
                self.chan_event("Newexten", ch, (("Extension", ch.exten), ("Application", step.app),
                                                 ("AppData", step.data)), "dialplan")
            if hook is not None:
                hook()
                hook = None
            delay = self.exec_step(ch, step)
            if delay is None:
                continue
            if delay != FOREVER and not ch.gone:
                ch.timer = self.later(delay, self._resume, ch)
            return

    def _resume(self: Any, ch: Channel) -> None:
        ch.timer = None
        if not ch.gone:
            self.continue_channel(ch)

    def exec_step(self: Any, ch: Channel, step: Step) -> Optional[float]:
        app, args = step.app, step.args
        if app == "Answer":
            return self.config.answer_wait if self.answer(ch) else None
        if app == "Wait":
            return float(args[0])
        if app == "Playback":
            self.answer(ch)
            return float(args[1]) if len(args) > 1 and args[1] else self.config.playback_seconds
        if app == "UserEvent":
            extra = [("UserEvent", args[0])]
            for item in args[1:]:
                name, _, value = item.partition(":")
                extra.append((name.strip(), value.lstrip()))
            self.chan_event("UserEvent", ch, tuple(extra), "user")
            return None
        if app == "Set":
            name, _, value = args[0].partition("=")
            self.setvar(ch, name, value)
            return None
        if app == "Ringing":
            if ch.half == 2 and ch.peer is not None and not ch.peer.gone and ch.peer.state != UP:
                self.set_state(ch.peer, RINGING)
                self.dial_ringing(ch.peer)
            return None
        if app == "Progress":
            return None
        if app in ("Busy", "Congestion"):
            ch.hangup_cause = 17 if app == "Busy" else 34
            self.set_state(ch, BUSY)
            if ch.half == 2 and ch.peer is not None and ch.peer.state != UP:
                self.remote_refused(ch.peer, "BUSY" if app == "Busy" else "CONGESTION")
            elif args and args[0]:
                return float(args[0])
            return FOREVER
        if app == "Hangup":
            cause = int(args[0]) if args and args[0] else 16
            ch.hangup_cause = cause
            self.hangup(ch, cause)
            return FOREVER
        if app == "Dial":
            self.dial(ch, args)
            return FOREVER
        return FOREVER  # Echo, and any application an originate names: until hung up

    def answer(self: Any, ch: Channel) -> bool:
        """Answer ``ch``; a Local ;2 answers its ;1 too, which completes whoever dialed it."""
        if ch.state == UP:
            return False
        self.set_state(ch, UP)
        peer = ch.peer
        if ch.half == 2 and peer is not None and not peer.gone and peer.state != UP:
            self.set_state(peer, UP)
            self.remote_answered(peer)
        talk = self.talk.pop(ch.linkedid, None)
        if talk is not None:
            seconds, cause = talk
            self.later(seconds, lambda: self.hangup(ch, cause) if not ch.gone else None)
        return True

    def redirect(self: Any, ch: Channel, context: str, exten: str, priority: int) -> None:
        """Move ``ch`` to ``exten@context``; a missing extension hangs it up (cause 0)."""
        self._stop(ch)
        if not ch.in_pbx:
            # Asterisk moves a channel out of an application by masquerading it into a new one.
            ch.masqueraded = True
        if ch.bridge is not None and ch in ch.bridge.channels:
            partner = self.bridge_leave(ch)
            if partner is not None:
                self.bridge_partner_left(partner)
        steps = self.config.lookup(exten, context)
        if steps is None or priority > len(steps):
            def relocate() -> None:
                # Asterisk's SoftHangupRequest still shows the old place; the Hangup shows the new one.
                ch.context, ch.exten, ch.priority = context, exten, priority
                ch.touch()

            ch.in_pbx = True
            self.hangup(ch, 0, between=relocate)
            return
        self.run_pbx(ch, steps, context, exten, priority)

    # -- Dial -------------------------------------------------------------------
    def dial(self: Any, caller: Channel, args: Tuple[str, ...]) -> None:
        target = args[0]
        timeout = float(args[1]) if len(args) > 1 and args[1] else 0.0
        tech, _, resource = target.partition("/")
        run = DialRun(caller, target, resource, self.monotonic())
        caller.dial = run
        for name in _DIAL_VARS:
            self.setvar(caller, name, "")
        if tech.lower() == "local":
            exten, context, device = self.local_target(resource)
            steps = self.config.lookup(exten, context)
            if steps is None:
                self._dial_unavailable(run)
                return
            one, two = self.local_pair(exten, context, caller.linkedid, device=device)
            run.callee = one
            one.dialed_by = run
            self.setvar(one, "DIALEDPEERNUMBER", resource)
            one.context, one.exten = caller.context, caller.exten
            one.cid_num, one.cid_name = caller.cid_num or caller.exten, caller.cid_name
            one.app, one.appdata = "AppDial", "(Outgoing Line)"
            one.touch()
            self.chan_event("Newexten", one, (("Extension", one.exten), ("Application", "AppDial"),
                                              ("AppData", "(Outgoing Line)")), "dialplan")
            self.chan_event("NewCallerid", one, (("CID-CallingPres", "0 (Presentation Allowed, Not Screened)"),))
            self.setvar(two, "DIALEDPEERNUMBER", resource)
            two.conn_num, two.conn_name = one.cid_num, one.cid_name
            two.touch()
            self.chan_event("NewConnectedLine", two)
            self.local_bridge(one, two)
            self.dial_event("DialBegin", caller, one, (("DialString", resource),))
            if timeout:
                run.timer = self.later(timeout, self._dial_timeout, run)
            self.run_pbx(two, steps, context, exten, 1)
            return
        endpoint = self.find_endpoint(tech, resource)
        if endpoint is None:
            self._dial_unavailable(run)
            return
        callee = self.endpoint_channel(endpoint, DOWN, endpoint.context, "s", caller.linkedid)
        run.callee = callee
        callee.dialed_by = run
        callee.app, callee.appdata = "AppDial", "(Outgoing Line)"
        callee.cid_num, callee.cid_name = caller.cid_num or caller.exten, caller.cid_name
        callee.touch()
        self.dial_event("DialBegin", caller, callee, (("DialString", resource),))
        if timeout:
            run.timer = self.later(timeout, self._dial_timeout, run)
        self.ring_endpoint(callee, endpoint, self.ring.get(caller.linkedid))

    def _dial_unavailable(self: Any, run: DialRun) -> None:
        run.finished = True
        run.caller.dial = None
        self.setvar(run.caller, "DIALSTATUS", "CHANUNAVAIL")
        self._resume_soon(run.caller)

    def _resume_soon(self: Any, ch: Channel) -> None:
        if not ch.gone:
            ch.timer = self.later(0.0, self._resume, ch)

    def _dial_timeout(self: Any, run: DialRun) -> None:
        run.timer = None
        if run.finished or run.answered or run.callee is None:
            return
        self.dial_refused(run, "NOANSWER")

    def dial_refused(self: Any, run: DialRun, status: str, hang_callee: bool = True) -> None:
        """The callee is busy, congested, unanswered or gone: DialEnd, then the caller goes on."""
        if run.finished:
            return
        run.finished = True
        if run.timer is not None:
            run.timer.cancel()
        caller, callee = run.caller, run.callee
        caller.dial = None
        if callee is not None:
            self.dial_event("DialEnd", caller, callee, (("DialStatus", status),))
        self.setvar(caller, "DIALSTATUS", status)
        if hang_callee and callee is not None and not callee.gone:
            self.hangup(callee, {"BUSY": 17, "CONGESTION": 34, "NOANSWER": 19}.get(status, 16))
        self._resume_soon(caller)

    def dial_cancel(self: Any, run: DialRun) -> None:
        """The caller hung up while its Dial was ringing: DialEnd CANCEL, the callee goes too."""
        run.finished = True
        if run.timer is not None:
            run.timer.cancel()
        callee = run.callee
        if callee is not None:
            self.dial_event("DialEnd", run.caller, callee, (("DialStatus", "CANCEL"),))
            if not callee.gone:
                self.hangup(callee, 16)

    def dial_answered(self: Any, run: DialRun) -> None:
        """The callee answered: DIALSTATUS, DialEnd, answer the caller, bridge the two."""
        if run.finished or run.answered:
            return
        run.answered = True
        run.answered_at = self.monotonic()
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        caller, callee = run.caller, run.callee
        assert callee is not None
        self.setvar(caller, "DIALSTATUS", "ANSWER")
        self.setvar(caller, "DIALEDPEERNAME", callee.name)
        self.setvar(caller, "DIALEDPEERNUMBER", run.dialstring)
        if callee.tech == "Local":
            # Asterisk's DialEnd already shows the answered ;1 with an empty Exten; its Newexten follows.
            callee.exten = ""
            callee.touch()
        self.dial_event("DialEnd", caller, callee, (("DialStatus", "ANSWER"),))
        if caller.state != UP:
            self.answer(caller)
        if caller.gone or callee.gone:
            return
        bridge = self.bridge_create()
        run.bridge = bridge
        if callee.tech == "Local":
            self.chan_event("Newexten", callee, (("Extension", ""), ("Application", "AppDial"),
                                                 ("AppData", "(Outgoing Line)")), "dialplan")
        self.bridge_enter(bridge, callee)
        self.bridge_enter(bridge, caller)
        self.setvar(callee, "BRIDGEPEER", caller.name)
        self.setvar(caller, "BRIDGEPEER", callee.name)

    def dial_bridge_ended(self: Any, run: DialRun) -> None:
        """The callee left the bridge: the Dial's times, then the caller hangs up (no 'g' option)."""
        run.finished = True
        caller = run.caller
        caller.dial = None
        now = self.monotonic()
        scale = self.config.time_scale
        answered_ms = int((now - run.answered_at) * 1000 / scale)
        dialed_ms = int((now - run.started) * 1000 / scale)
        for name, value in (("ANSWEREDTIME", answered_ms // 1000), ("ANSWEREDTIME_MS", answered_ms),
                            ("DIALEDTIME", dialed_ms // 1000), ("DIALEDTIME_MS", dialed_ms),
                            ("DIALSTATUS", "ANSWER")):
            self.setvar(caller, name, str(value))
        self.hangup(caller, 16)

    # -- inbound calls (traffic) ------------------------------------------------
    def inbound_call(self: Any, endpoint: Any, exten: str, context: str,
                     talk: Optional[Tuple[float, int]] = None, ring_time: Optional[float] = None) -> Channel:
        """A call from ``endpoint`` into ``exten@context``, as a phone would place it."""
        self.calls_processed += 1
        ch = self.endpoint_channel(endpoint, RING, context, exten)
        ch.cid_num, ch.cid_name = endpoint.cid_num, endpoint.cid_name
        ch.conn_num = ch.conn_name = ""
        ch.touch()
        if talk is not None:
            self.talk[ch.linkedid] = talk
        if ring_time is not None:
            self.ring[ch.linkedid] = ring_time
        steps = self.config.lookup(exten, context) or (Step("Hangup", "1"),)
        self.run_pbx(ch, steps, context, exten, 1)
        if ch.gone:
            self.talk.pop(ch.linkedid, None)
            self.ring.pop(ch.linkedid, None)
        self.flush()
        return ch

    def forget_call(self: Any, linkedid: str) -> None:
        self.talk.pop(linkedid, None)
        self.ring.pop(linkedid, None)
