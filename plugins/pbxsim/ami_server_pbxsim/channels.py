"""Channels and bridges as Asterisk names and shows them, and the header blocks of their events.

A channel is mutable (its state, priority and variables change during a
call); what leaves the simulator is a tuple of header pairs, cached per
channel until something the standard block shows changes, so that a call's
thirty-odd events do not rebuild the same sixteen headers each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Tuple

Headers = Tuple[Tuple[str, str], ...]

# ChannelState numbers and descriptions (AST_STATE_*).
DOWN, RESERVED, OFFHOOK, DIALING, RING, RINGING, UP, BUSY = range(8)
STATE_DESC = ("Down", "Rsrvd", "OffHook", "Dialing", "Ring", "Ringing", "Up", "Busy")

#: Cause-txt of the hangup causes the simulator produces (Q.850 names as Asterisk prints them).
CAUSE_TEXT: Dict[int, str] = {
    0: "Unknown", 1: "Unallocated (unassigned) number", 3: "No route to destination",
    16: "Normal Clearing", 17: "User busy", 18: "No user responding", 19: "User alerting, no answer",
    21: "Call Rejected", 27: "Destination out of order", 28: "Invalid number format (addr incomplete)",
    31: "Normal, unspecified", 34: "Circuit/channel congestion", 38: "Network out of order",
    41: "Temporary failure", 42: "Switching equipment congestion", 127: "Interworking, unspecified",
}

UNKNOWN = "<unknown>"
#: What ``Channel.variables`` shows for a channel that never had a variable set.
NO_VARIABLES: Mapping[str, str] = MappingProxyType({})
BLOCK_NAMES = ("Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName",
               "ConnectedLineNum", "ConnectedLineName", "Language", "AccountCode", "Context",
               "Exten", "Priority", "Uniqueid", "Linkedid")
_PREFIXED: Dict[str, Tuple[str, ...]] = {}


def _names(prefix: str) -> Tuple[str, ...]:
    names = _PREFIXED.get(prefix)
    if names is None:
        names = _PREFIXED[prefix] = tuple(prefix + n for n in BLOCK_NAMES)
    return names


def cause_text(cause: int) -> str:
    return CAUSE_TEXT.get(cause, "Unknown")


class Channel:
    """One simulated channel: identity, dialplan position, caller ID, variables and call links."""

    __slots__ = (
        "name", "uniqueid", "linkedid", "tech", "device", "state", "cid_num", "cid_name",
        "conn_num", "conn_name", "language", "accountcode", "context", "exten", "priority",
        "_vars", "app", "appdata", "created", "peer", "half", "bridge", "program",
        "step", "timer", "hangup_cause", "gone", "in_pbx", "dial", "origin", "endpoint",
        "dialed_by", "masqueraded", "_block",
    )

    def __init__(self, name: str, uniqueid: str, linkedid: str, tech: str, device: str, state: int,
                 context: str, exten: str, created: float, language: str = "en") -> None:
        self.name = name
        self.uniqueid = uniqueid
        self.linkedid = linkedid
        self.tech = tech
        self.device = device
        self.state = state
        self.cid_num = ""
        self.cid_name = ""
        self.conn_num = ""
        self.conn_name = ""
        self.language = language
        self.accountcode = ""
        self.context = context
        self.exten = exten
        self.priority = 1
        self._vars: Optional[Dict[str, str]] = None  # created by the first set_var
        self.app = ""
        self.appdata = ""
        self.created = created
        self.peer: Optional["Channel"] = None      # the other half of a Local pair
        self.half = 0                              # 1 or 2 for Local halves
        self.bridge: Optional["Bridge"] = None
        self.program: Tuple[Any, ...] = ()         # dialplan steps being run
        self.step = 0
        self.timer: Any = None                     # pending TimerHandle of the current step
        self.hangup_cause = 0                      # set by Busy/Congestion/Hangup(cause)
        self.gone = False
        self.in_pbx = False
        self.dial: Any = None                      # the Dial this channel placed (caller side)
        self.origin: Any = None                    # the originate request that created it
        self.endpoint: Any = None
        self.dialed_by: Any = None                 # the Dial that created it (callee side)
        self.masqueraded = False                   # redirected out of an application into the dialplan
        self._block: Optional[Headers] = None

    @property
    def variables(self) -> Mapping[str, str]:
        """The channel's variables, read-only (set them with :meth:`set_var`)."""
        return self._vars if self._vars is not None else NO_VARIABLES

    def set_var(self, name: str, value: str) -> None:
        """Set a channel variable (the dict is created here, on the first one)."""
        if self._vars is None:
            self._vars = {}
        self._vars[name] = value

    def touch(self) -> None:
        """Something the standard block shows changed: rebuild it on next use."""
        self._block = None

    def block(self, prefix: str = "") -> Headers:
        """The standard channel block (Channel ... Linkedid), optionally with a name prefix.

        The cache is filled by the simulator while it emits a burst of events
        (and dropped after it), never here: an idle channel keeps no block.
        """
        if not prefix and self._block is not None:
            return self._block
        values = (
            self.name, str(self.state), STATE_DESC[self.state], self.cid_num or UNKNOWN,
            self.cid_name or UNKNOWN, self.conn_num or UNKNOWN, self.conn_name or UNKNOWN,
            self.language, self.accountcode, self.context, self.exten, str(self.priority),
            self.uniqueid, self.linkedid,
        )
        return tuple(zip(_names(prefix), values))

    @property
    def up(self) -> bool:
        return self.state == UP


class Bridge:
    """A two-party basic bridge (``simple_bridge`` technology), as Dial makes one."""

    __slots__ = ("uniqueid", "channels", "created")

    def __init__(self, uniqueid: str, created: float) -> None:
        self.uniqueid = uniqueid
        self.channels: List[Channel] = []
        self.created = created

    def block(self) -> Headers:
        return (
            ("BridgeUniqueid", self.uniqueid), ("BridgeType", "basic"),
            ("BridgeTechnology", "simple_bridge"), ("BridgeCreator", "<unknown>"),
            ("BridgeName", "<unknown>"), ("BridgeNumChannels", str(len(self.channels))),
            ("BridgeVideoSourceMode", "none"),
        )


@dataclass(frozen=True)
class Originate:
    """An Originate request as the core sees it, after the plugin validated the headers."""

    channel: str
    context: str = ""
    exten: str = ""
    priority: int = 1
    application: str = ""
    data: str = ""
    timeout: float = 30.0
    cid_num: str = ""
    cid_name: str = ""
    variables: Tuple[Tuple[str, str], ...] = ()
    account: str = ""
    channel_id: str = ""
    other_channel_id: str = ""
    action_id: Optional[str] = None
    async_: bool = True


@dataclass(frozen=True)
class OriginateResult:
    """How an originate ended: Reason code (4 answered, 5 busy, 8 congestion, 3 no answer, 0 failure)."""

    success: bool
    reason: int
    channel: Optional[str] = None
