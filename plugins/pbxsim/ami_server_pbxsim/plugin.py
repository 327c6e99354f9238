"""The ami-server plugin: AMI actions, CLI commands and events of the simulated PBX.

Only ``from ami_server import ...`` is used. The simulator is built at
start-up from the plugin's table (``server.plugin_config``), so a bad table
stops start-up and ``--check-config`` naming the key, and configured traffic
with ``autostart`` begins with the server. A reload that changes the table
takes effect on the next simulator action.
"""

from __future__ import annotations

import re
import time
from typing import Any, List, Optional, Tuple

from ami_server import (Action, ActionContext, ActionError, Block, CliCommand, Deferred, Event, Response,
                        ServerHandle, hookimpl)

from . import cli
from .channels import STATE_DESC, Channel, Originate, OriginateResult
from .config import ConfigError, parse_callerid, parse_config
from .core import Simulator
from .traffic import TrafficGenerator

_TRUE = {"yes", "true", "y", "t", "1", "on"}
#: How long a synchronous Originate's reply may take (its Timeout header is in milliseconds).
ORIGINATE_REPLY_SECONDS = 3600.0


class PBX:
    """One server's simulator, built from the plugin's table at start-up and on a changed table."""

    def __init__(self, server: ServerHandle) -> None:
        self.server = server
        self.sim: Optional[Simulator] = None
        self.traffic: Optional[TrafficGenerator] = None
        self._table: Any = None
        self._use(server.plugin_config)

    def _emit(self, name: str, classes: str, headers: Any) -> None:
        self.server.publish(Event(name, classes, headers))

    def get(self, ctx: ActionContext) -> Simulator:
        if ctx.config is not self._table:
            try:
                self._use(ctx.config)
            except ConfigError as exc:
                raise ActionError(f"pbxsim configuration: {exc}") from None
        assert self.sim is not None
        return self.sim

    def _use(self, table: Any) -> None:
        """Build or reconfigure the simulator from ``table``; ConfigError names the key."""
        if table is not self._table:
            config = parse_config(table)
            if self.sim is None:
                self.sim = Simulator(config, self._emit, self.server.call_later, time.monotonic, time.time)
            else:
                self.sim.config = config
            self._table = table
            if self.traffic is not None:
                self.traffic.stop()
            self.traffic = TrafficGenerator(self.sim, config.traffic) if config.traffic else None
            if self.traffic is not None and config.traffic is not None and config.traffic.autostart:
                self.traffic.start()


def _channel_or_error(sim: Simulator, name: Optional[str], message: str = "No such channel") -> Channel:
    ch = sim.find(name or "")
    if ch is None:
        raise ActionError(message)
    return ch


def _int(text: Optional[str], default: int) -> Optional[int]:
    if text is None or text.strip() == "":
        return default
    try:
        return int(text.strip())
    except ValueError:
        return None


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def evaluate(sim: Simulator, ch: Optional[Channel], name: str) -> Optional[str]:
    """A variable or the few dialplan functions clients ask for; ``None`` when unset."""
    match = re.fullmatch(r"([A-Z_]+)\((.*)\)", name.strip())
    if match:
        func, arg = match.group(1), match.group(2).strip().lower()
        if func == "GLOBAL":
            return sim.globals.get(match.group(2).strip())
        if ch is None:
            return None
        if func == "CHANNEL":
            values = {"state": STATE_DESC[ch.state], "name": ch.name, "uniqueid": ch.uniqueid,
                      "linkedid": ch.linkedid, "language": ch.language, "accountcode": ch.accountcode,
                      "context": ch.context, "exten": ch.exten, "priority": str(ch.priority),
                      "channeltype": ch.tech}
            return values.get(arg)
        if func == "CALLERID":
            return {"num": ch.cid_num, "name": ch.cid_name}.get(arg)
        return None
    if ch is not None and name in ch.variables:
        return ch.variables[name]
    return sim.globals.get(name)


@hookimpl
def register_actions(server: ServerHandle) -> List[Any]:
    pbx = PBX(server)

    def originate(ctx: ActionContext) -> Any:
        sim = pbx.get(ctx)
        req = ctx.request
        channel = req.get("Channel") or ""
        if not channel:
            raise ActionError("Channel not specified")
        priority = _int(req.get("Priority"), 1)
        if priority is None:
            raise ActionError("Invalid priority")
        timeout_ms = _int(req.get("Timeout"), 30000)
        if timeout_ms is None:
            raise ActionError("Invalid timeout")
        if "/" not in channel:
            raise ActionError("Invalid channel")
        application = req.get("Application") or ""
        exten = req.get("Exten") or ""
        context = req.get("Context") or "default"
        if not application and sim.config.lookup(exten, context) is None:
            raise ActionError("Extension does not exist.")
        cid_num, cid_name = parse_callerid(req.get("CallerID") or "")
        variables = []
        for item in req.get_all("Variable"):
            for part in item.split(","):
                name, sep, value = part.partition("=")
                if sep and name.strip():
                    variables.append((name.strip(), value))
        asynchronous = (req.get("Async") or "").strip().lower() in _TRUE
        request = Originate(
            channel, context, exten, priority, application, req.get("Data") or "", max(timeout_ms, 0) / 1000.0,
            cid_num, cid_name, tuple(variables), req.get("Account") or "", req.get("ChannelId") or "",
            req.get("OtherChannelId") or "", req.action_id or None, asynchronous,
        )
        if asynchronous:
            sim.originate(request, lambda result: None)
            return Response.success("Originate successfully queued")
        deferred: Deferred = ctx.defer()

        def done(result: OriginateResult) -> None:
            deferred.complete(Response.success("Originate successfully queued") if result.success
                              else Response.error("Originate failed"))

        # Started from a timer so that the reply is pending before the first event is published.
        ctx.call_later(0, lambda: sim.originate(request, done))
        return deferred

    def hangup(ctx: ActionContext) -> Response:
        sim = pbx.get(ctx)
        name = ctx.request.get("Channel") or ""
        if not name:
            raise ActionError("No channel specified")
        cause = _int(ctx.request.get("Cause"), 0) or 0
        if len(name) > 1 and name.startswith("/") and name.endswith("/"):
            try:
                pattern = re.compile(name[1:-1])
            except re.error:
                raise ActionError(f"Regex compile failed on: {name}") from None
            matched = [ch for ch in sim.channels.values() if pattern.search(ch.name)]
            action_id = ctx.request.action_id
            items = [Block("ChannelHungup", (("Channel", ch.name),) + ((("ActionID", action_id),) if action_id else ()),
                           with_action_id=False) for ch in matched]
            for ch in matched:
                sim.hangup_by_request(ch, cause)
            return Response.list(items, "ChannelsHungupListComplete", message="Channels hung up will follow")
        ch = _channel_or_error(sim, name)
        sim.hangup_by_request(ch, cause)
        return Response.success("Channel Hungup")

    def status(ctx: ActionContext) -> Response:
        sim = pbx.get(ctx)
        name = ctx.request.get("Channel")
        channels = [_channel_or_error(sim, name)] if name else list(sim.channels.values())
        wanted = [v.strip() for v in (ctx.request.get("Variables") or "").split(",") if v.strip()]
        every = (ctx.request.get("AllVariables") or "").strip().lower() in _TRUE
        action_id = ctx.request.action_id
        items = []
        for ch in channels:
            headers: List[Tuple[str, str]] = [("Privilege", "Call")]
            headers += ch.block()
            bridge = ch.bridge.uniqueid if ch.bridge is not None and ch in ch.bridge.channels else ""
            fmt = "slin" if ch.tech == "Local" else "ulaw"
            headers += [
                ("Type", ch.tech), ("DNID", ""), ("EffectiveConnectedLineNum", ch.conn_num or "<unknown>"),
                ("EffectiveConnectedLineName", ch.conn_name or "<unknown>"), ("TimeToHangup", "0"),
                ("BridgeID", bridge), ("Application", ch.app), ("Data", ch.appdata),
                ("Nativeformats", f"({fmt})"), ("Readformat", fmt), ("Readtrans", ""), ("Writeformat", fmt),
                ("Writetrans", ""), ("Callgroup", "0"), ("Pickupgroup", "0"), ("Seconds", str(sim.duration(ch))),
            ]
            if every:
                headers += [("Variable", f"{k}={v}") for k, v in ch.variables.items()]
            for var in wanted:
                value = evaluate(sim, ch, var)
                headers.append(("Variable", f"{var}={'(null)' if value is None else value}"))
            if action_id:
                headers.append(("ActionID", action_id))
            items.append(Block("Status", headers, with_action_id=False))
        return Response.list(items, "StatusComplete", message="Channel status will follow",
                             complete_headers=(("Items", str(len(items))),))

    def core_show_channels(ctx: ActionContext) -> Response:
        sim = pbx.get(ctx)
        items = []
        for ch in sim.channels.values():
            bridge = ch.bridge.uniqueid if ch.bridge is not None and ch in ch.bridge.channels else ""
            items.append(Block("CoreShowChannel", ch.block() + (
                ("Application", ch.app), ("ApplicationData", ch.appdata),
                ("Duration", _hms(sim.duration(ch))), ("BridgeId", bridge))))
        return Response.list(items, "CoreShowChannelsComplete", message="Channels will follow")

    def getvar(ctx: ActionContext) -> Response:
        sim = pbx.get(ctx)
        variable = ctx.request.get("Variable") or ""
        if not variable:
            raise ActionError("No variable specified")
        name = ctx.request.get("Channel")
        ch = _channel_or_error(sim, name) if name else None
        value = evaluate(sim, ch, variable)
        return Response.success(None, (("Variable", variable), ("Value", value or "")))

    def setvar(ctx: ActionContext) -> Response:
        sim = pbx.get(ctx)
        variable = ctx.request.get("Variable") or ""
        if not variable:
            raise ActionError("No variable specified")
        name = ctx.request.get("Channel")
        ch = _channel_or_error(sim, name) if name else None
        sim.setvar(ch, variable, ctx.request.get("Value") or "")
        return Response.success("Variable Set")

    def redirect(ctx: ActionContext) -> Response:
        sim = pbx.get(ctx)
        req = ctx.request
        name = req.get("Channel") or ""
        if not name:
            raise ActionError("Channel not specified")
        exten = req.get("Exten") or ""
        if not exten:
            raise ActionError("Exten not specified")
        priority = _int(req.get("Priority"), 1)
        if priority is None:
            raise ActionError("Invalid priority")
        ch = _channel_or_error(sim, name, f"Channel does not exist: {name}")
        extra_name = req.get("ExtraChannel") or ""
        extra = _channel_or_error(sim, extra_name, f"ExtraChannel does not exist: {extra_name}") if extra_name else None
        sim.redirect(ch, req.get("Context") or ch.context, exten, priority)
        if extra is not None:
            extra_priority = _int(req.get("ExtraPriority"), priority) or priority
            sim.redirect(extra, req.get("ExtraContext") or req.get("Context") or extra.context,
                         req.get("ExtraExten") or exten, extra_priority)
        sim.flush()
        return Response.success("Dual Redirect successful" if extra is not None else "Redirect successful")

    def bridge_list(ctx: ActionContext) -> Response:
        sim = pbx.get(ctx)
        wanted = ctx.request.get("BridgeType")
        items = [Block("BridgeListItem", b.block()) for b in sim.bridges.values()
                 if not wanted or wanted == "simple_bridge"]
        return Response.list(items, "BridgeListComplete", message="Bridge listing will follow")

    def bridge_info(ctx: ActionContext) -> Response:
        sim = pbx.get(ctx)
        bridge_id = ctx.request.get("BridgeUniqueid") or ""
        if not bridge_id:
            raise ActionError("BridgeUniqueid must be provided")
        bridge = sim.bridges.get(bridge_id)
        if bridge is None:
            raise ActionError("Specified BridgeUniqueid not found")
        items = [Block("BridgeInfoChannel", ch.block()) for ch in bridge.channels]
        return Response.list(items, "BridgeInfoComplete", message="Bridge channel listing will follow",
                             complete_headers=bridge.block())

    def traffic_start(ctx: ActionContext) -> Response:
        pbx.get(ctx)
        if pbx.traffic is None:
            raise ActionError("No traffic scenario configured ([plugins.pbxsim.traffic])")
        pbx.traffic.start()
        return Response.success("Traffic started")

    def traffic_stop(ctx: ActionContext) -> Response:
        pbx.get(ctx)
        if pbx.traffic is None:
            raise ActionError("No traffic scenario configured ([plugins.pbxsim.traffic])")
        pbx.traffic.stop()
        return Response.success("Traffic stopped", (("CallsStarted", str(pbx.traffic.started)),))

    def show_channels(ctx: ActionContext, args: Tuple[str, ...]) -> List[str]:
        return cli.core_show_channels(pbx.get(ctx), args)

    return [
        # A synchronous Originate answers when the call is answered or fails (Timeout, 30 s by
        # default): longer than [server] action_timeout may allow.
        Action("Originate", originate, "Originate a call.", "originate", timeout=ORIGINATE_REPLY_SECONDS),
        Action("Hangup", hangup, "Hangup channel.", ("system", "call")),
        Action("Status", status, "List channel status.", ("system", "call", "reporting"), read_only=True),
        Action("CoreShowChannels", core_show_channels, "List currently active channels.",
               ("system", "reporting"), read_only=True),
        Action("Getvar", getvar, "Gets a channel variable or function value.", ("call", "reporting"),
               read_only=True),
        Action("Setvar", setvar, "Sets a channel variable or function value.", "call"),
        Action("Redirect", redirect, "Redirect (transfer) a call.", "call"),
        Action("BridgeList", bridge_list, "Get a list of bridges in the system.", "reporting", read_only=True),
        Action("BridgeInfo", bridge_info, "Get information about a bridge.", "reporting", read_only=True),
        Action("PBXSimStart", traffic_start, "Start the simulator's configured call traffic.", "system"),
        Action("PBXSimStop", traffic_stop, "Stop the simulator's call traffic.", "system"),
        CliCommand("core show channels", show_channels, "Display information on channels"),
    ]
