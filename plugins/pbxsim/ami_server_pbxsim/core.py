"""The simulator's core: channels, Local pairs, endpoints, bridges and hang-ups, without I/O.

It never touches a socket or the wall clock on its own: events leave through
the injected ``emit(name, classes, headers)``, time passes through the
injected ``call_later(delay, callback)`` and ``monotonic()``. That is what
lets the tests run hundreds of random calls on a fake clock in milliseconds,
and the plugin run the same code on ami-server's loop.

Event order follows Asterisk 22.10.1's transcripts. Where Asterisk's own
order varies between runs (its threads race), one observed order is used
consistently; the choices are commented where they are made.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from .channels import (BUSY, DOWN, RING, RINGING, UP, Bridge, Channel, Headers, Originate, OriginateResult,
                       cause_text)
from .config import SimConfig, Step
from .dialplan import FOREVER, Interpreter

Emit = Callable[[str, str, Headers], None]
CallLater = Callable[[float, Callable[[], None]], Any]
Done = Callable[[OriginateResult], None]

_NO_ARG: Any = object()
#: At most this many distinct Originate applications and Local targets keep a shared record.
_SHARED_LIMIT = 1024


class Timer:
    """A scheduled ``fn(arg)``, followed by the simulator's deferred events.

    ``cancel()`` also drops the references: the server's loop keeps a
    cancelled handle in its heap until its time, and it should not keep the
    channel (and its call) alive that long.
    """

    __slots__ = ("sim", "fn", "arg", "handle")

    def __init__(self, sim: "Simulator", fn: Callable[..., None], arg: Any) -> None:
        self.sim: Optional[Simulator] = sim
        self.fn: Optional[Callable[..., None]] = fn
        self.arg = arg
        self.handle: Any = None

    def __call__(self) -> None:
        sim, fn, arg = self.sim, self.fn, self.arg
        self.sim = self.fn = self.arg = self.handle = None
        if sim is None or fn is None:
            return
        if arg is _NO_ARG:
            fn()
        else:
            fn(arg)
        sim.flush()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.sim = self.fn = self.arg = self.handle = None


class OriginState:
    """An originate in progress: the request, its completion callback and its no-answer timer."""

    __slots__ = ("request", "done", "timer", "finished", "dial_ended")

    def __init__(self, request: Originate, done: Done) -> None:
        self.request = request
        self.done = done
        self.timer: Optional[Timer] = None
        self.finished = False
        self.dial_ended = False  # DialEnd sent, or deliberately none (timeout)


class Simulator(Interpreter):
    """All live channels and bridges of one simulated PBX, and the operations on them."""

    def __init__(self, config: SimConfig, emit: Emit, call_later: CallLater,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.emit = emit
        self._call_later = call_later
        self.monotonic = monotonic
        self.wall = wall
        self.channels: Dict[str, Channel] = {}
        self.bridges: Dict[str, Bridge] = {}
        self.globals: Dict[str, str] = {}
        self.rng = random.Random(config.seed)
        self._uid = config.first_uniqueid
        self._counters: Dict[str, int] = {"local": config.first_local}
        self._deferred: List[Tuple[str, str, Headers]] = []
        self._hot: List[Channel] = []
        self.calls_processed = 0
        self.live_calls = 0  # calls whose first channel (Uniqueid = Linkedid) is up
        self.talk: Dict[str, Tuple[float, int]] = {}   # linkedid -> (talk time, hangup cause) for traffic calls
        self.ring: Dict[str, float] = {}               # linkedid -> ring time for endpoints dialed by traffic
        # Records many calls share instead of each holding a copy (see docs/performance.md).
        self._programs: Dict[Tuple[str, str], Tuple[Step, ...]] = {}
        self._local_names: Dict[str, Tuple[str, str, str]] = {}

    # -- time and events ----------------------------------------------------
    def later(self, delay: float, fn: Callable[..., None], arg: Any = _NO_ARG) -> Timer:
        """Run ``fn(arg)`` (or ``fn()``) after ``delay`` (scaled by ``time_scale``), then flush."""
        timer = Timer(self, fn, arg)
        timer.handle = self._call_later(delay * self.config.time_scale, timer)
        return timer

    def flush(self) -> None:
        """Emit the events Asterisk raises asynchronously (device states, DialState) after a burst."""
        while self._deferred:
            pending, self._deferred = self._deferred, []
            for name, classes, headers in pending:
                self.emit(name, classes, headers)
        if self._hot:
            self.cool()

    def hot_block(self, ch: Channel) -> Headers:
        """``ch``'s standard block, cached until the end of the burst."""
        block = ch._block
        if block is None:
            block = ch._block = ch.block()
            self._hot.append(ch)
        return block

    def chan_event(self, name: str, ch: Channel, extra: Headers = (), classes: str = "call") -> None:
        block = self.hot_block(ch)
        self.emit(name, classes, block + extra if extra else block)

    def cool(self) -> None:
        """Drop the header blocks cached during a burst: an idle call should cost little memory."""
        for ch in self._hot:
            ch._block = None
        self._hot.clear()

    def _release_dial_states(self, ch: Channel) -> None:
        """A deferred DialState about ``ch`` goes out before its Hangup, never after it."""
        keep = []
        for item in self._deferred:
            name, classes, headers = item
            if name == "DialState" and (("DestChannel", ch.name) in headers or ("Channel", ch.name) in headers):
                self.emit(name, classes, headers)
            else:
                keep.append(item)
        self._deferred = keep

    def _device_state(self, ch: Channel, state: str) -> None:
        self._deferred.append(("DeviceStateChange", "call", (("Device", ch.device), ("State", state))))

    def set_state(self, ch: Channel, state: int) -> None:
        if ch.state == state:
            return
        ch.state = state
        ch.touch()
        self.chan_event("Newstate", ch)
        self._device_state(ch, "RINGING" if state == RINGING and ch.tech != "Local" else "INUSE")

    def setvar(self, ch: Optional[Channel], name: str, value: str) -> None:
        if ch is None:
            self.globals[name] = value
            self.emit("VarSet", "dialplan",
                      (("Channel", "none"), ("Uniqueid", "none"), ("Variable", name), ("Value", value)))
            return
        ch.set_var(name, value)
        self.chan_event("VarSet", ch, (("Variable", name), ("Value", value)), "dialplan")

    def dial_event(self, name: str, caller: Optional[Channel], dest: Channel, extra: Headers) -> None:
        headers = self.hot_block(caller) if caller is not None else ()
        self.emit(name, "call", headers + dest.block("Dest") + extra)

    # -- identifiers and channel creation -----------------------------------
    def _uniqueid(self) -> str:
        epoch = self.config.epoch if self.config.epoch is not None else int(self.wall())
        uid = f"{epoch}.{self._uid}"
        self._uid += 1
        return uid

    def next_index(self, counter: str) -> int:
        value = self._counters.get(counter, 0)
        self._counters[counter] = value + 1
        return value

    def bridge_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def new_channel(self, name: str, tech: str, device: str, state: int, context: str, exten: str,
                    linkedid: Optional[str] = None, uniqueid: str = "", language: str = "",
                    created: Optional[float] = None) -> Channel:
        uid = uniqueid or self._uniqueid()
        ch = Channel(name, uid, linkedid or uid, tech, device, state, context, exten,
                     self.monotonic() if created is None else created, language or self.config.language)
        self.channels[name] = ch
        if ch.uniqueid == ch.linkedid:
            self.live_calls += 1
        return ch

    def local_target(self, resource: str) -> Tuple[str, str, str]:
        """``exten@context[/options]`` -> (exten, context, device), shared by the calls to a configured target."""
        names = self._local_names.get(resource)
        if names is None:
            exten, _, context = resource.split("/", 1)[0].partition("@")
            context = context or "default"
            names = (exten, context, f"Local/{exten}@{context}")
            if len(self._local_names) < _SHARED_LIMIT and self.config.lookup(exten, context) is not None:
                self._local_names[resource] = names
        return names

    def local_pair(self, exten: str, context: str, linkedid: Optional[str] = None,
                   uid1: str = "", uid2: str = "", device: str = "") -> Tuple[Channel, Channel]:
        """``Local/<exten>@<context>-<8 hex>;1`` (Down) and ``;2`` (Ring), Newchannel for both."""
        device = device or f"Local/{exten}@{context}"
        base = f"{device}-{self.next_index('local'):08x}"
        now = self.monotonic()
        one = self.new_channel(base + ";1", "Local", device, DOWN, context, exten, linkedid, uid1, created=now)
        two = self.new_channel(base + ";2", "Local", device, RING, context, exten, one.linkedid, uid2, created=now)
        one.peer, two.peer, one.half, two.half = two, one, 1, 2
        self.chan_event("Newchannel", one)
        self.chan_event("Newchannel", two)
        return one, two

    def endpoint_channel(self, endpoint: Any, state: int, context: str, exten: str,
                         linkedid: Optional[str] = None, uniqueid: str = "") -> Channel:
        index = self.next_index(endpoint.tech.lower())
        ch = self.new_channel(f"{endpoint.device}-{index:08x}", endpoint.tech, endpoint.device, state,
                              context, exten, linkedid, uniqueid, endpoint.language)
        ch.endpoint = endpoint
        ch.accountcode = endpoint.accountcode
        self.chan_event("Newchannel", ch)
        return ch

    def local_bridge(self, one: Channel, two: Channel) -> None:
        self.emit("LocalBridge", "call", one.block("LocalOne") + two.block("LocalTwo") + (
            ("Context", two.context), ("Exten", two.exten), ("LocalOptimization", "Yes")))

    def find_endpoint(self, tech: str, resource: str) -> Any:
        endpoint = self.config.endpoints.get(resource)
        if endpoint is not None and endpoint.tech.lower() == tech.lower():
            return endpoint
        return None

    # -- Originate ------------------------------------------------------------
    def originate(self, request: Originate, done: Done) -> None:
        """Place the call ``request`` describes; ``done`` is called once with the outcome."""
        tech, _, resource = request.channel.partition("/")
        state = OriginState(request, done)
        self.calls_processed += 1
        if tech.lower() == "local":
            self._originate_local(state, resource)
        else:
            endpoint = self.find_endpoint(tech, resource)
            if endpoint is None:
                # Unknown technology or device: no channel at all, only the failure.
                self.finish_origin(state, False, 0, None)
            else:
                self._originate_endpoint(state, endpoint)
        self.flush()

    def _originate_local(self, state: OriginState, resource: str) -> None:
        req = state.request
        exten, context, device = self.local_target(resource)
        one, two = self.local_pair(exten, context, None, req.channel_id, req.other_channel_id, device)
        one.origin = state
        one.app, one.appdata = "AppDial2", "(Outgoing Line)"
        self.chan_event("Newexten", one, (("Extension", exten), ("Application", "AppDial2"),
                                          ("AppData", "(Outgoing Line)")), "dialplan")
        steps = self.config.lookup(exten, context)
        if steps is None:
            # The ;2 half has nowhere to go: both halves die with cause 0, devices INVALID.
            for ch in (two, one):
                if ch is one:
                    self.finish_origin(state, False, 0, None)
                ch.gone = True
                self.chan_event("Hangup", ch, (("Cause", "0"), ("Cause-txt", "Unknown")))
                self.channels.pop(ch.name, None)
            self.live_calls -= 1
            self._deferred += [("DeviceStateChange", "call", (("Device", one.device), ("State", "INVALID")))] * 2
            return
        # Observed order: ;1's variables last-first, ;1's caller ID, then ;2's variables and caller ID.
        for name, value in reversed(req.variables):
            self.setvar(one, name, value)
        if req.account:
            for ch in (one, two):
                ch.accountcode = req.account
                ch.touch()
        has_cid = bool(req.cid_num or req.cid_name)
        if has_cid:
            self._set_callerid(one, req.cid_num, req.cid_name)
        for name, value in req.variables:
            self.setvar(two, name, value)
        if has_cid:
            self._set_callerid(two, req.cid_num, req.cid_name, connected_first=True)
        self.local_bridge(one, two)
        self.dial_event("DialBegin", None, one, (("DialString", resource),))
        self.run_pbx(two, steps, context, exten, 1)
        # A ;2 that answers (or fails) at once needs no no-answer timer: none is scheduled.
        if one.origin is state and not state.finished and not one.gone:
            state.timer = self.later(req.timeout, self._origin_timeout, one)

    def _set_callerid(self, ch: Channel, num: str, name: str, connected_first: bool = False) -> None:
        if connected_first:
            ch.conn_num, ch.conn_name = num, name
        ch.cid_num, ch.cid_name = num, name
        ch.touch()
        self.chan_event("NewCallerid", ch, (("CID-CallingPres", "0 (Presentation Allowed, Not Screened)"),))
        ch.conn_num, ch.conn_name = num, name
        ch.touch()
        self.chan_event("NewConnectedLine", ch)

    def _originate_endpoint(self, state: OriginState, endpoint: Any) -> None:
        req = state.request
        ch = self.endpoint_channel(endpoint, DOWN, endpoint.context, "s", None, req.channel_id)
        ch.origin = state
        ch.app, ch.appdata = "AppDial2", "(Outgoing Line)"
        for name, value in req.variables:
            self.setvar(ch, name, value)
        if req.account:
            ch.accountcode = req.account
            ch.touch()
        if req.cid_num or req.cid_name:
            self._set_callerid(ch, req.cid_num, req.cid_name)
        self.dial_event("DialBegin", None, ch, (("DialString", endpoint.name),))
        state.timer = self.later(req.timeout, self._origin_timeout, ch)
        self.ring_endpoint(ch, endpoint)

    def ring_endpoint(self, ch: Channel, endpoint: Any, ring_time: Optional[float] = None) -> None:
        """What a dialed device does: ring, then answer, refuse busy or congested, or keep ringing."""
        behaviour = endpoint.behaviour
        if behaviour in ("busy", "congestion"):
            ch.hangup_cause = 17 if behaviour == "busy" else 34
            ch.timer = self.later(0.0, self._endpoint_refuses, ch)
            return
        self.set_state(ch, RINGING)
        self.dial_ringing(ch)
        if behaviour == "answer":
            delay = endpoint.answer_delay if ring_time is None else ring_time
            ch.timer = self.later(delay, self._endpoint_answers, ch)

    def _endpoint_refuses(self, ch: Channel) -> None:
        self.remote_refused(ch, "BUSY" if ch.hangup_cause == 17 else "CONGESTION")

    def _endpoint_answers(self, ch: Channel) -> None:
        ch.timer = None
        if not ch.gone and ch.state != UP:
            self.set_state(ch, UP)
            self.remote_answered(ch)

    def dial_ringing(self, callee: Channel) -> None:
        """DialState RINGING for whoever dials ``callee`` (raised after the burst, as Asterisk does)."""
        dial = callee.dialed_by
        caller = dial.caller.block() if dial is not None else ()
        if callee.origin is not None or dial is not None:
            self._deferred.append(("DialState", "call",
                                   caller + callee.block("Dest") + (("DialStatus", "RINGING"),)))

    def remote_answered(self, callee: Channel) -> None:
        """The dialed channel (Local ;1 or a device) answered: finish the originate or the Dial."""
        if callee.dialed_by is not None:
            self.dial_answered(callee.dialed_by)
            return
        state = callee.origin
        if state is None or state.finished:
            return
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        self.dial_event("DialEnd", None, callee, (("DialStatus", "ANSWER"),))
        req = state.request
        callee.origin = None  # answered: nothing refers to the request any more
        if req.application:
            self.finish_origin(state, True, 4, callee)
            callee.in_pbx = False
            callee.program = self._program(req.application, req.data)
            callee.step = 0
            self.continue_channel(callee)
            return
        steps = self.config.lookup(req.exten, req.context) or ()
        self.run_pbx(callee, steps, req.context, req.exten, req.priority,
                     first_hook=lambda: self.finish_origin(state, True, 4, callee))

    def _program(self, app: str, data: str) -> Tuple[Step, ...]:
        """The one-step program of an Originate with Application, shared by calls that name the same one."""
        key = (app, data)
        program = self._programs.get(key)
        if program is None:
            program = (Step(app, data),)
            if len(self._programs) < _SHARED_LIMIT:
                self._programs[key] = program
        return program

    def remote_refused(self, callee: Channel, status: str) -> None:
        """The dialed side signalled busy or congestion before answering."""
        callee.timer = None
        if callee.gone:
            return
        if callee.dialed_by is not None:
            self.dial_refused(callee.dialed_by, status)
            return
        state = callee.origin
        if state is None or state.finished:
            return
        if state.timer is not None:
            state.timer.cancel()
        state.dial_ended = True
        self.dial_event("DialEnd", None, callee, (("DialStatus", status),))
        reason = 5 if status == "BUSY" else 8
        self.hangup(callee, 0, between=lambda: self.finish_origin(state, False, reason, None))

    def _origin_timeout(self, ch: Channel) -> None:
        state = ch.origin
        if state is None or state.finished or ch.gone:
            return
        state.timer = None
        # No DialEnd here: Asterisk 22 sends none when an originate times out.
        state.dial_ended = True
        self.hangup(ch, 19, between=lambda: self.finish_origin(state, False, 3, None))

    def finish_origin(self, state: OriginState, success: bool, reason: int, ch: Optional[Channel]) -> None:
        if state.finished:
            return
        state.finished = True
        req = state.request
        if req.async_:
            headers: List[Tuple[str, str]] = []
            if req.action_id is not None:
                headers.append(("ActionID", req.action_id))
            headers += [("Response", "Success" if success else "Failure"),
                        ("Channel", ch.name if ch is not None else req.channel)]
            if req.application:
                headers += [("Application", req.application), ("Data", req.data)]
            else:
                headers += [("Context", req.context), ("Exten", req.exten)]
            headers += [("Reason", str(reason)), ("Uniqueid", ch.uniqueid if ch is not None else "<unknown>"),
                        ("CallerIDNum", req.cid_num or "<unknown>"), ("CallerIDName", req.cid_name or "<unknown>")]
            self.emit("OriginateResponse", "call", tuple(headers))
        state.done(OriginateResult(success, reason, ch.name if ch is not None else None))

    # -- hang-up --------------------------------------------------------------
    def hangup(self, x: Channel, cause: int, between: Optional[Callable[[], None]] = None) -> None:
        """Hang up ``x`` (and its Local peer) in the order Asterisk 22 reports it.

        ``between`` runs right after the peer's HangupRequest (where
        Asterisk reports a failed originate's OriginateResponse).
        """
        if x.gone:
            return
        x.gone = True
        self._stop(x)
        origin = x.origin
        if origin is not None and not origin.finished and not origin.dial_ended and x.state != UP:
            origin.dial_ended = True
            self.dial_event("DialEnd", None, x, (("DialStatus", "CANCEL"),))
        if x.in_pbx:
            self.chan_event("SoftHangupRequest", x, (("Cause", "16"),))
        peer = x.peer if x.peer is not None and not x.peer.gone else None
        if peer is None:
            self.pending_dial_failed(x, cause)
            if between is not None:
                between()
            self.leave_and_hangup(x, x.hangup_cause or cause)
            return
        peer.gone = True
        self._stop(peer)
        status = x.variables.get("DIALSTATUS") if x.half == 2 else None
        if status is not None:
            # A ;2 that ran Dial hands its DIALSTATUS to ;1 as it goes (chan_local's local_hangup).
            self.setvar(peer, "CHANLOCALSTATUS", status)
        self.chan_event("HangupRequest", peer, (("Cause", str(cause)),))
        if x.half == 2:
            self.pending_dial_failed(peer, x.hangup_cause or cause)
        if between is not None:
            between()
        if x.half == 1:
            if peer.in_pbx:
                self.chan_event("SoftHangupRequest", peer, (("Cause", "16"),))
            self.leave_and_hangup(peer, peer.hangup_cause or cause)
            self.leave_and_hangup(x, cause)
        else:
            self.leave_and_hangup(x, x.hangup_cause or cause)
            if peer.in_pbx:
                self.chan_event("SoftHangupRequest", peer, (("Cause", "16"),))
                self.flush()
            # A masqueraded ;1 has lost the cause its ;2 hands over.
            self.leave_and_hangup(peer, 0 if peer.masqueraded else cause)

    def _stop(self, ch: Channel) -> None:
        if ch.timer is not None:
            ch.timer.cancel()
            ch.timer = None
        state = ch.origin
        if state is not None and state.timer is not None:
            state.timer.cancel()
            state.timer = None

    def pending_dial_failed(self, callee: Channel, cause: int) -> None:
        """``callee`` goes away before answering: end whatever dials it, with a status from the cause."""
        status = {17: "BUSY", 34: "CONGESTION"}.get(cause, "NOANSWER")
        if callee.dialed_by is not None and not callee.dialed_by.answered:
            self.dial_refused(callee.dialed_by, status, hang_callee=False)
        elif callee.origin is not None and not callee.origin.finished and callee.state != UP:
            state = callee.origin
            state.dial_ended = True
            self.dial_event("DialEnd", None, callee, (("DialStatus", status),))
            self.finish_origin(state, False, 0, None)

    def leave_and_hangup(self, ch: Channel, cause: int) -> None:
        """Leave the bridge, end a pending Dial, then the Hangup event; consequences follow."""
        ch.gone = True
        self._stop(ch)
        bridge = ch.bridge
        partner = None
        if bridge is not None and ch in bridge.channels:
            partner = self.bridge_leave(ch)
        if ch.dial is not None and not ch.dial.answered and not ch.dial.finished:
            self.dial_cancel(ch.dial)
        if self._deferred:
            self._release_dial_states(ch)
        self.chan_event("Hangup", ch, (("Cause", str(cause)), ("Cause-txt", cause_text(cause))))
        self._device_state(ch, "NOT_INUSE")
        self.channels.pop(ch.name, None)
        if ch.uniqueid == ch.linkedid:
            self.live_calls -= 1
            self.forget_call(ch.linkedid)
        if ch.origin is not None and not ch.origin.finished:
            self.finish_origin(ch.origin, False, 0, None)
        if partner is not None:
            self.bridge_partner_left(partner)
        if bridge is not None and not bridge.channels and bridge.uniqueid in self.bridges:
            del self.bridges[bridge.uniqueid]
            self.emit("BridgeDestroy", "call", bridge.block())

    # -- bridges --------------------------------------------------------------
    def bridge_create(self) -> Bridge:
        bridge = Bridge(self.bridge_id(), self.monotonic())
        self.bridges[bridge.uniqueid] = bridge
        self.emit("BridgeCreate", "call", bridge.block())
        return bridge

    def bridge_enter(self, bridge: Bridge, ch: Channel) -> None:
        bridge.channels.append(ch)
        ch.bridge = bridge
        self.emit("BridgeEnter", "call", bridge.block() + self.hot_block(ch))

    def bridge_leave(self, ch: Channel) -> Optional[Channel]:
        """``ch`` leaves its bridge; returns the partner left alone in it, if any."""
        bridge = ch.bridge
        assert bridge is not None
        others = [c for c in bridge.channels if c is not ch]
        if len(others) == 1 and "BRIDGEPEER" in ch.variables:
            self.setvar(ch, "BRIDGEPEER", "")
            self.setvar(others[0], "BRIDGEPEER", "")
        bridge.channels.remove(ch)
        self.emit("BridgeLeave", "call", bridge.block() + self.hot_block(ch))
        return others[0] if len(others) == 1 else None

    def bridge_partner_left(self, partner: Channel) -> None:
        """A two-party bridge lost one side: the other side leaves too and its Dial ends."""
        if partner.gone:
            return
        self.bridge_leave(partner)
        dial = partner.dial
        if dial is not None:
            self.dial_bridge_ended(dial)
        else:
            self.hangup(partner, 16)

    # -- lookups and listing --------------------------------------------------
    def find(self, name: str) -> Optional[Channel]:
        ch = self.channels.get(name)
        if ch is None:
            lowered = name.lower()
            for candidate in self.channels.values():
                if candidate.name.lower() == lowered:
                    return candidate
        return ch

    def duration(self, ch: Channel) -> int:
        return int((self.monotonic() - ch.created) / self.config.time_scale)

    def active_calls(self) -> int:
        return len({ch.linkedid for ch in self.channels.values()})

    def hangup_by_request(self, ch: Channel, cause: int) -> None:
        """The Hangup action on ``ch``."""
        self.hangup(ch, cause)
        self.flush()
