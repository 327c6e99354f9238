"""Micro-benchmark: the cost of one ``ActionExecuted`` audit record, this tree against a git revision.

    python bench/audit_record.py                       # this tree only
    python bench/audit_record.py --baseline HEAD~3     # and ami_server/ as it was at HEAD~3
    python bench/audit_record.py --baseline A --baseline B   # several revisions at once

Writes N records as the server writes ``ActionExecuted`` (a session's
``AuditFields`` and five fields; through ``AuditLogger.write`` in revisions
that had it) to a sink that drops every line, so only building, scrubbing
and rendering the record are timed. The baseline is
loaded from ``git archive`` into a temporary package of another name, in the
same process; the variants alternate round after round and the figures are
per record. It prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import timeit
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_TRUSTED = frozenset({
    "event", "audit", "level", "timestamp", "session", "remote_address", "local_address", "remote_ip", "tls",
    "result", "duration_ms", "duration", "limit", "buffered", "timeout", "auth_type", "backend", "action",
})
_WHO_TRUSTED = frozenset({"session", "remote_address", "local_address", "remote_ip", "tls"})
#: As the server writes them: a Ping with a numeric ActionID, a UserEvent with a message.
_VALUES = [
    ("Ping", "17", "Success", None, 0.012),
    ("UserEvent", "ue-4711", "Success", "Event Sent", 0.031),
    ("ListCommands", None, "Success", None, 0.208),
    ("Ping", "18", "Success", None, 0.011),
]
_SECRETS = ["adminpass", "readerpass", "limitedpass", "xq"]


def baseline_audit(revision: str, into: Path, number: int) -> types.ModuleType:
    """``ami_server.audit`` as it was at ``revision``, imported as ``ami_server_baseline<number>.audit``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "ami_server"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into)
    name = f"ami_server_baseline{number}"
    package = types.ModuleType(name)
    package.__path__ = [str(into / "ami_server")]  # its __init__ (the whole server) is not run
    sys.modules[name] = package
    return importlib.import_module(f"{name}.audit")


def writer(audit: types.ModuleType, count: int) -> Tuple[Callable[[], None], List[str]]:
    """A function writing ``count`` ActionExecuted records through ``audit``, and a sample of its lines."""

    class NullSink(audit.LogSink):
        def write_line(self, line: str) -> None:
            pass

    class KeepSink(audit.LogSink):
        def __init__(self) -> None:
            self.lines: List[str] = []

        def write_line(self, line: Any) -> None:
            self.lines.append(line.decode() if isinstance(line, bytes) else line)

    redactor = audit.Redactor(_SECRETS)
    names = ("action", "action_id", "result", "message", "duration_ms")
    who = audit.AuditFields({
        "session": "0x3f9c2a7b4d10", "remote_address": "IPV4/TCP/127.0.0.1/40112",
        "local_address": "IPV4/TCP/127.0.0.1/5038", "remote_ip": "127.0.0.1", "tls": False,
        "username": "admin",
    }, _WHO_TRUSTED)
    def record_writer(log: Any) -> Callable[[Tuple[Any, ...]], None]:
        """How the server writes one ActionExecuted with ``log`` (revisions differ)."""
        if hasattr(audit, "RecordKind"):  # revisions with compiled record shapes
            kind = audit.RecordKind("ActionExecuted", names, _TRUSTED)
            return lambda values: log.write(kind, who, values)
        record = log.record
        return lambda values: record(
            "ActionExecuted", {**dict(zip(names, values)), audit.TRUSTED_FIELDS_KEY: _TRUSTED}, who)

    keep = KeepSink()
    sample = record_writer(audit.make_audit_logger(keep, redactor=redactor))
    for values in _VALUES:
        sample(values)
    write = record_writer(audit.make_audit_logger(NullSink(), redactor=redactor))
    values = (_VALUES * (count // len(_VALUES) + 1))[:count]

    def run() -> None:
        for value in values:
            write(value)

    return run, keep.lines


def _without_timestamp(line: str) -> Dict[str, Any]:
    """The record a line holds, but its timestamp (revisions may differ in the JSON's spacing)."""
    record = json.loads(line)
    record.pop("timestamp", None)
    return record


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", action="append", default=[],
                        help="a git revision of this repository to compare with (repeatable)")
    parser.add_argument("-n", "--records", type=int, default=20000, help="records per timed run")
    parser.add_argument("--rounds", type=int, default=15, help="timed runs per variant")
    args = parser.parse_args(argv)

    from ami_server import audit as current

    variants: Dict[str, types.ModuleType] = {"this tree": current}
    with tempfile.TemporaryDirectory() as scratch:
        for number, revision in enumerate(args.baseline):
            variants[f"baseline {revision}"] = baseline_audit(revision, Path(scratch) / str(number), number)
        runs: Dict[str, Callable[[], None]] = {}
        samples: Dict[str, List[str]] = {}
        for name, module in variants.items():
            runs[name], samples[name] = writer(module, args.records)
            runs[name]()  # warm the caches (compiled shapes, rendered AuditFields)
        figures: Dict[str, List[float]] = {name: [] for name in variants}
        names = list(variants)
        for number in range(args.rounds):
            for name in names[number % len(names):] + names[:number % len(names)]:
                seconds = timeit.timeit(runs[name], number=1)
                figures[name].append(seconds / args.records * 1e6)
    print(f"ActionExecuted to a null sink: {args.records} records x {args.rounds} rounds, "
          f"Python {sys.version.split()[0]}")
    for name, per_record in figures.items():
        print(f"  {name:<24} min {min(per_record):.3f} us  median {statistics.median(per_record):.3f} us  "
              f"max {max(per_record):.3f} us per record")
    if len(samples) > 1:
        rendered = [list(map(_without_timestamp, lines)) for lines in samples.values()]
        print("  records identical (timestamps aside):", all(lines == rendered[0] for lines in rendered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
