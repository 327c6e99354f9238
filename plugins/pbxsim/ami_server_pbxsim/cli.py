"""``core show channels`` (plain, ``concise``, ``verbose``, ``count``) in Asterisk 22's column layout."""

from __future__ import annotations

from typing import List, Tuple

from ami_server import ActionError

from .channels import STATE_DESC
from .core import Simulator

_SHORT = "{:<64.64} {:<32.32} {:<7.7} {:<30.30}"
_VERBOSE = "{:<80.80} {:<24.24} {:<24.24} {:>4.4} {:<7.7} {:<12.12} {:<25.25} {:<15.15} {:>8.8} {:<11.11} {:<11.11} {:<20.20}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def core_show_channels(sim: Simulator, args: Tuple[str, ...]) -> List[str]:
    """The CLI output lines; ``args`` are the words after ``core show channels``."""
    mode = args[0].lower() if args else ""
    if mode not in ("", "concise", "verbose", "count") or len(args) > 1:
        raise ActionError("Command 'core show channels' failed.")
    channels = list(sim.channels.values())
    lines: List[str] = []
    if mode == "concise":
        for ch in channels:
            bridge = ch.bridge.uniqueid if ch.bridge is not None and ch in ch.bridge.channels else ""
            lines.append("!".join((ch.name, ch.context, ch.exten, str(ch.priority), STATE_DESC[ch.state], ch.app,
                                   ch.appdata, ch.cid_num, ch.accountcode, "", "3", str(sim.duration(ch)),
                                   bridge, ch.uniqueid)))
        return lines
    if mode == "":
        lines.append(_SHORT.format("Channel", "Location", "State", "Application(Data)"))
        for ch in channels:
            location = f"{ch.exten}@{ch.context}:{ch.priority}" if ch.exten else "(None)"
            app = f"{ch.app}({ch.appdata})" if ch.app else "(None)"
            lines.append(_SHORT.format(ch.name, location, STATE_DESC[ch.state], app))
    elif mode == "verbose":
        lines.append(_VERBOSE.format("Channel", "Context", "Extension", "Prio", "State", "Application", "Data",
                                     "CallerID", "Duration", "Accountcode", "PeerAccount", "BridgeID"))
        for ch in channels:
            bridge = ch.bridge.uniqueid if ch.bridge is not None and ch in ch.bridge.channels else ""
            lines.append(_VERBOSE.format(ch.name, ch.context, ch.exten, str(ch.priority), STATE_DESC[ch.state],
                                         ch.app, ch.appdata, ch.cid_num, _hms(sim.duration(ch)), ch.accountcode,
                                         "", bridge))
    lines.append(_plural(len(channels), "active channel"))
    lines.append(_plural(sim.active_calls(), "active call"))
    lines.append(_plural(sim.calls_processed, "call") + " processed")
    return lines
