"""The ``[plugins.pbxsim]`` table, parsed into frozen records.

Checked strictly, like ami-server's own configuration: an unknown key, a
wrong type or a malformed dialplan step is a :class:`ConfigError` that names
the key path (``plugins.pbxsim.extensions."100@default"[2]: ...``), because a
typo in a test PBX otherwise shows up as a puzzling event sequence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

PREFIX = "plugins.pbxsim"

#: Applications the interpreter knows, with the number of arguments each takes at most.
APPS: Dict[str, int] = {
    "Answer": 0, "Ringing": 0, "Progress": 0, "Wait": 1, "Playback": 2, "UserEvent": 99,
    "Set": 1, "Dial": 3, "Busy": 1, "Congestion": 1, "Echo": 0, "Hangup": 1,
}
_APP_CASE = {name.lower(): name for name in APPS}
_STEP_RE = re.compile(r"^\s*([A-Za-z]+)\s*(?:\((.*)\))?\s*$", re.S)
BEHAVIOURS = ("answer", "busy", "noanswer", "congestion")


class ConfigError(ValueError):
    """A configuration problem; the message starts with the key path."""


@dataclass(frozen=True)
class Step:
    """One dialplan priority: the application and its data as Asterisk shows it (AppData)."""

    app: str
    data: str = ""

    @property
    def args(self) -> Tuple[str, ...]:
        return tuple(self.data.split(",")) if self.data else ()


@dataclass(frozen=True)
class Endpoint:
    """A simulated device (``PJSIP/alice``): how it answers when dialed, and its caller ID."""

    tech: str
    name: str
    behaviour: str = "answer"
    answer_delay: float = 1.0
    context: str = "default"
    cid_num: str = ""
    cid_name: str = ""
    language: str = "en"
    accountcode: str = ""

    @property
    def device(self) -> str:
        return f"{self.tech}/{self.name}"


@dataclass(frozen=True)
class Distribution:
    """A duration drawn uniformly from ``[low, high]`` seconds."""

    low: float
    high: float


@dataclass(frozen=True)
class Traffic:
    """A load scenario: inbound calls from ``callers`` to ``destinations`` at a steady rate."""

    calls_per_second: float = 1.0
    max_concurrent: int = 100
    callers: Tuple[str, ...] = ()
    destinations: Tuple[str, ...] = ()
    ring_time: Distribution = Distribution(0.5, 2.0)
    talk_time: Distribution = Distribution(1.0, 5.0)
    hangup_causes: Tuple[Tuple[int, float], ...] = ((16, 1.0),)
    autostart: bool = False
    total_calls: int = 0


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator core needs; built by :func:`parse_config`."""

    extensions: Mapping[Tuple[str, str], Tuple[Step, ...]] = field(default_factory=dict)
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    traffic: Optional[Traffic] = None
    seed: Optional[int] = None
    epoch: Optional[int] = None
    first_uniqueid: int = 0
    first_local: int = 0
    time_scale: float = 1.0
    answer_wait: float = 0.5
    playback_seconds: float = 1.0
    language: str = "en"

    def contexts(self) -> set:
        return {context for _, context in self.extensions}

    def lookup(self, exten: str, context: str) -> Optional[Tuple[Step, ...]]:
        return self.extensions.get((exten, context))


def parse_step(text: Any, path: str) -> Step:
    """``"Wait(3)"`` -> ``Step("Wait", "3")``; the data is kept as written, as AppData shows it."""
    if not isinstance(text, str):
        raise ConfigError(f"{path}: a step must be a string like \"Wait(3)\", got {text!r}")
    match = _STEP_RE.match(text)
    if not match:
        raise ConfigError(f"{path}: cannot parse step {text!r} (expected App or App(args))")
    name, data = match.group(1), match.group(2) or ""
    app = _APP_CASE.get(name.lower())
    if app is None:
        raise ConfigError(f"{path}: unknown application {name!r} (known: {', '.join(APPS)})")
    args = data.split(",") if data else []
    if len(args) > APPS[app]:
        raise ConfigError(f"{path}: {app} takes at most {APPS[app]} argument(s), got {data!r}")
    if app in ("Wait",) and (not args or not _is_number(args[0])):
        raise ConfigError(f"{path}: Wait needs a number of seconds, got {data!r}")
    if app == "Playback" and not args:
        raise ConfigError(f"{path}: Playback needs a sound name")
    if app == "Set" and (not args or "=" not in args[0] or not args[0].split("=", 1)[0]):
        raise ConfigError(f"{path}: Set needs name=value, got {data!r}")
    if app == "UserEvent" and (not args or not args[0]):
        raise ConfigError(f"{path}: UserEvent needs an event name")
    if app == "Dial":
        if not args or "/" not in args[0]:
            raise ConfigError(f"{path}: Dial needs a target like PJSIP/alice or Local/100@default, got {data!r}")
        if len(args) > 1 and args[1] and not _is_number(args[1]):
            raise ConfigError(f"{path}: Dial timeout must be seconds, got {args[1]!r}")
    if app == "Hangup" and args and args[0] and not args[0].isdigit():
        raise ConfigError(f"{path}: Hangup cause must be a number, got {args[0]!r}")
    return Step(app, data)


def _is_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def _expect(value: Any, kind: Any, path: str, what: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: must be {what}, got {value!r}")
    return value


def _duration(value: Any, path: str) -> float:
    value = _expect(value, float, path, "a number of seconds")
    if value < 0:
        raise ConfigError(f"{path}: must not be negative, got {value!r}")
    return value


def _distribution(value: Any, path: str) -> Distribution:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = high = _duration(value, path)
    elif isinstance(value, list) and len(value) == 2:
        low, high = _duration(value[0], f"{path}[0]"), _duration(value[1], f"{path}[1]")
        if high < low:
            raise ConfigError(f"{path}: [low, high] with high >= low, got {value!r}")
    else:
        raise ConfigError(f"{path}: must be seconds or [low, high], got {value!r}")
    return Distribution(low, high)


def _unknown(table: Mapping[str, Any], known: set, path: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{path}.{key}: unknown key (known: {', '.join(sorted(known))})")


def parse_callerid(text: str) -> Tuple[str, str]:
    """``'"AMI Test" <5551000>'`` -> ``("5551000", "AMI Test")``; a bare number is the number."""
    text = text.strip()
    match = re.match(r'^\s*"?([^"<]*?)"?\s*<([^>]*)>\s*$', text)
    if match:
        return match.group(2).strip(), match.group(1).strip()
    if re.fullmatch(r"[0-9*#+]+", text):
        return text, ""
    return "", text


def _endpoint(name: str, table: Any, path: str) -> Endpoint:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: must be a table")
    _unknown(table, {"tech", "behaviour", "answer_delay", "context", "callerid", "language", "accountcode"}, path)
    tech = _expect(table.get("tech", "PJSIP"), str, f"{path}.tech", "a string")
    behaviour = _expect(table.get("behaviour", "answer"), str, f"{path}.behaviour", "a string")
    if behaviour not in BEHAVIOURS:
        raise ConfigError(f"{path}.behaviour: must be one of {', '.join(BEHAVIOURS)}, got {behaviour!r}")
    num, cname = parse_callerid(_expect(table.get("callerid", ""), str, f"{path}.callerid", "a string"))
    return Endpoint(
        tech, name, behaviour,
        _duration(table.get("answer_delay", 1.0), f"{path}.answer_delay"),
        _expect(table.get("context", "default"), str, f"{path}.context", "a string"),
        num, cname,
        _expect(table.get("language", "en"), str, f"{path}.language", "a string"),
        _expect(table.get("accountcode", ""), str, f"{path}.accountcode", "a string"),
    )


def _traffic(table: Any, path: str, endpoints: Mapping[str, Endpoint], extensions: Mapping) -> Traffic:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: must be a table")
    known = {"calls_per_second", "max_concurrent", "callers", "destinations", "ring_time", "talk_time",
             "hangup_causes", "autostart", "total_calls"}
    _unknown(table, known, path)
    rate = _expect(table.get("calls_per_second", 1.0), float, f"{path}.calls_per_second", "a number")
    if rate <= 0:
        raise ConfigError(f"{path}.calls_per_second: must be positive, got {rate!r}")
    callers = _expect(table.get("callers", []), list, f"{path}.callers", "a list of endpoint names")
    for i, caller in enumerate(callers):
        if caller not in endpoints and str(caller).split("/", 1)[-1] not in endpoints:
            raise ConfigError(f"{path}.callers[{i}]: no endpoint {caller!r} in {PREFIX}.endpoints")
    destinations = _expect(table.get("destinations", []), list, f"{path}.destinations", "a list of exten@context")
    for i, dest in enumerate(destinations):
        exten, _, context = str(dest).partition("@")
        if (exten, context or "default") not in extensions:
            raise ConfigError(f"{path}.destinations[{i}]: no extension {dest!r} in {PREFIX}.extensions")
    if not callers or not destinations:
        raise ConfigError(f"{path}: needs at least one caller and one destination")
    causes_table = _expect(table.get("hangup_causes", {"16": 1.0}), Mapping, f"{path}.hangup_causes",
                           "a table of cause = weight")
    causes = []
    for key, weight in causes_table.items():
        if not str(key).isdigit():
            raise ConfigError(f"{path}.hangup_causes.{key}: cause must be a number")
        causes.append((int(key), _duration(weight, f"{path}.hangup_causes.{key}")))
    if not causes or sum(w for _, w in causes) <= 0:
        raise ConfigError(f"{path}.hangup_causes: needs a positive weight")
    limit = _expect(table.get("max_concurrent", 100), int, f"{path}.max_concurrent", "an integer")
    total = _expect(table.get("total_calls", 0), int, f"{path}.total_calls", "an integer")
    return Traffic(
        rate, limit,
        tuple(str(c).split("/", 1)[-1] for c in callers), tuple(str(d) for d in destinations),
        _distribution(table.get("ring_time", [0.5, 2.0]), f"{path}.ring_time"),
        _distribution(table.get("talk_time", [1.0, 5.0]), f"{path}.talk_time"),
        tuple(causes),
        _expect(table.get("autostart", False), bool, f"{path}.autostart", "true or false"),
        total,
    )


def parse_config(table: Optional[Mapping[str, Any]]) -> SimConfig:
    """Validate the plugin's table; raises :class:`ConfigError` naming the first bad key."""
    table = table or {}
    known = {"extensions", "endpoints", "traffic", "seed", "epoch", "first_uniqueid", "first_local",
             "time_scale", "answer_wait", "playback_seconds", "language"}
    _unknown(table, known, PREFIX)
    extensions: Dict[Tuple[str, str], Tuple[Step, ...]] = {}
    ext_table = _expect(table.get("extensions", {}), Mapping, f"{PREFIX}.extensions", "a table")
    for key, steps in ext_table.items():
        path = f'{PREFIX}.extensions."{key}"'
        exten, sep, context = key.partition("@")
        if not sep or not exten or not context:
            raise ConfigError(f"{path}: keys are exten@context, like \"100@default\"")
        if not isinstance(steps, list) or not steps:
            raise ConfigError(f"{path}: must be a non-empty list of steps")
        extensions[(exten, context)] = tuple(parse_step(s, f"{path}[{i}]") for i, s in enumerate(steps))
    endpoints: Dict[str, Endpoint] = {}
    ep_table = _expect(table.get("endpoints", {}), Mapping, f"{PREFIX}.endpoints", "a table")
    for name, ep in ep_table.items():
        endpoints[name] = _endpoint(name, ep, f"{PREFIX}.endpoints.{name}")
    traffic = None
    if "traffic" in table:
        traffic = _traffic(table["traffic"], f"{PREFIX}.traffic", endpoints, extensions)
    seed = table.get("seed")
    if seed is not None:
        _expect(seed, int, f"{PREFIX}.seed", "an integer")
    epoch = table.get("epoch")
    if epoch is not None:
        _expect(epoch, int, f"{PREFIX}.epoch", "an integer (Unix seconds)")
    scale = _expect(table.get("time_scale", 1.0), float, f"{PREFIX}.time_scale", "a number")
    if scale <= 0:
        raise ConfigError(f"{PREFIX}.time_scale: must be positive, got {scale!r}")
    return SimConfig(
        extensions, endpoints, traffic, seed, epoch,
        _expect(table.get("first_uniqueid", 0), int, f"{PREFIX}.first_uniqueid", "an integer"),
        _expect(table.get("first_local", 0), int, f"{PREFIX}.first_local", "an integer"),
        scale,
        _duration(table.get("answer_wait", 0.5), f"{PREFIX}.answer_wait"),
        _duration(table.get("playback_seconds", 1.0), f"{PREFIX}.playback_seconds"),
        _expect(table.get("language", "en"), str, f"{PREFIX}.language", "a string"),
    )
