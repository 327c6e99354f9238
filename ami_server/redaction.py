"""Scrubbing secrets out of log records (A-3.16, D-8.8).

A separate module because it is the one place that decides what counts as a
secret in a record: every log line and audit record passes the same
:class:`Redactor` in the structlog processor chain before it is rendered.
"""

from __future__ import annotations

import re
from typing import Any, Callable, FrozenSet, Iterable, Optional, Tuple

__all__ = ["REDACTED", "SENSITIVE_KEYS", "TRUSTED_FIELDS_KEY", "Redactor"]

REDACTED = "[redacted]"
#: Field names whose values are never logged, whatever they hold (A-3.16, D-8.8).
SENSITIVE_KEYS = frozenset(
    {"secret", "key", "secret_hash", "password", "expected_response", "expectedresponse", "credentials"}
)

#: Values that are written as they are: no text in them.
_PLAIN = frozenset({bool, int, float})
#: A record field naming the other fields of that record that need no scrubbing.
TRUSTED_FIELDS_KEY = "_trusted_fields"

#: Lower-case parts of the names in ``_NAME_END``: a text holding none of them names no credential.
_NAME_HINTS = ("secret", "key", "passw", "credential")
# How a credential's name ends in free text: Secret, X-Secret, secret_hash, api_key, Password, credentials.
# (One greedy run before a fixed ending: matching stays linear in the text.)
_NAME_END = r"(?:secret(?:_hash)?|key|passw(?:or)?d|credentials?)"
# A quoted value, backslash escapes allowed ('x', "x", "a\"b").
_QUOTED = r"""'(?:[^'\\\r\n]|\\.)*'|"(?:[^"\\\r\n]|\\.)*\""""
# A quoted value, or one whose quote never closes (cut text): then the rest of the line.
_OPEN = rf"""{_QUOTED}|['"][^\r\n]*"""
# An unquoted token after "=": up to a space, a quote or a closing bracket; "[redacted]" is one unit.
_TOKEN = r"""(?:\[redacted\]|[^\s'",;&)\]}>])+"""

# A credential's value in free text (a logged request, a repr, a backend's error):
#   Secret: value          header form: the rest of the line (header values may hold spaces)
#   secret=value           assignment: one token (db.password=x, "(secret=x)", key=x&...)
#   'Secret': 'value'      quoted name and value (a dict's repr, JSON text)
#   ('Secret', 'value')    a header pair's repr
# A name inside a dotted path (users.ops.secret: is required) is a configuration
# key that an error message names, not a header: it is left alone.
_INLINE_SECRET_RE = re.compile(
    r"(?i)(?:"
    rf"(?P<header>(?<![\w./-])(?P<hq>['\"]?)[\w-]*{_NAME_END}(?P=hq)[ \t]*:[ \t]*)"
    rf"(?P<hvalue>{_OPEN}|\S[^\r\n]*)"
    rf"|(?P<assign>(?<![\w.-])[\w.-]*{_NAME_END}['\"]?[ \t]*=[ \t]*)(?P<avalue>{_OPEN}|{_TOKEN})"
    rf"|(?P<pair>(?<![\w.-])(?P<pq>['\"])[\w-]*{_NAME_END}(?P=pq)[ \t]*,[ \t]*)(?P<pvalue>{_OPEN}|{_TOKEN})"
    r")"
)


def _mask_credential(match: "re.Match[str]") -> str:
    """The name and separator as they were, the value replaced (a quoted value keeps its quotes)."""
    head = match.group("header") or match.group("assign") or match.group("pair")
    value = match.group("hvalue") or match.group("avalue") or match.group("pvalue")
    if value[0] in "'\"":
        return f"{head}{value[0]}{REDACTED}{value[0]}"
    return head + REDACTED


def _mask_short(match: "re.Match[str]") -> str:
    """A short secret in a value position: ``: a`` and ``=a`` keep their separator, ``'a'`` its quotes."""
    return (match.group(1) or match.group(2) or "") + REDACTED


class Redactor:
    """A structlog processor that removes secrets from every record (A-3.16).

    What counts as a secret's value, and is replaced by ``[redacted]``:

    - the value of a field, dict entry or ``(name, value)`` pair whose name
      is a credential's (:data:`SENSITIVE_KEYS`), whatever it holds;
    - in text, the value after a credential's name: ``Secret: ...`` (to the
      end of the line), ``secret=...``, ``'Key': '...'``, ``('Key', '...')``
      -- but not after a dotted configuration key in an error message
      (``users.ops.secret: is required``);
    - a configured secret of ``SHORT_BELOW`` characters or more, wherever it
      occurs, inside a longer value or word too (a client's header value that
      contains it, a backend's error quoting it, a URL): such a string is no
      accident, and its edges cannot be known;
    - a shorter configured secret (``is``, ``a``) only where it is a whole
      value: a whole field, list item or dict value, the rest of a line after
      ``:``, a token after ``=``, a quoted string. As a word inside text --
      the server's own messages, a client's sentence -- it is left alone: it
      cannot be told from the same word, and replacing it would mangle
      ``users.ops.secret: is required`` into nonsense.

    Anything else a record holds (an exception, bytes, an object) is
    replaced by its text, checked as above.
    """

    #: Secrets shorter than this are scrubbed only where they are a whole value.
    SHORT_BELOW = 4
    #: Up to this many secrets, :meth:`suspicious` looks for each with ``in``.
    FEW_SECRETS = 16

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: Tuple[str, ...] = ()
        self._known: FrozenSet[str] = frozenset()
        #: Counts changes of the secrets: text scrubbed under an older generation is stale.
        self.generation = 0
        self._short: FrozenSet[str] = frozenset()
        self._short_word: Optional["re.Pattern[str]"] = None
        self._short_value: Optional["re.Pattern[str]"] = None
        self._long: Optional["re.Pattern[str]"] = None
        self._many: Optional[Callable[[str], Any]] = None
        self.set_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Redact these too; secrets already known stay redacted (a reload never forgets one)."""
        self.set_secrets([*self._known, *secrets])

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Redact exactly these secrets from now on (empty ones are ignored)."""
        self.generation += 1
        unique = {s for s in secrets if s}
        self._known = frozenset(unique)
        # Longest first, so that a secret containing another is replaced whole.
        self._secrets = tuple(sorted((s for s in unique if len(s) >= self.SHORT_BELOW), key=len, reverse=True))
        self._long = re.compile("|".join(map(re.escape, self._secrets))) if self._secrets else None
        #: A value shorter than this holds no long secret.
        self._shortest_long = len(self._secrets[-1]) if self._secrets else 1 << 62
        # A few secrets are looked for with ``in``; many, with one regex scan.
        self._many = self._long.search if self._long is not None and len(self._secrets) > self.FEW_SECRETS else None
        short = sorted((s for s in unique if len(s) < self.SHORT_BELOW), key=len, reverse=True)
        self._short = frozenset(short)
        if short:
            alternatives = "(?:" + "|".join(map(re.escape, short)) + ")"
            # Where a short secret could be a value at all: not inside a word.
            self._short_word = re.compile(rf"(?<![A-Za-z0-9]){alternatives}(?![A-Za-z0-9])")
            self._short_value = re.compile(
                rf"(:[ \t]*){alternatives}(?=[ \t]*(?:[\r\n]|\Z))"  # Name: a<end of line>
                rf"|(=[ \t]*){alternatives}(?=[\s,;&)\]}}>'\"]|\Z)"  # name=a
                rf"|(?<=(['\"])){alternatives}(?=\3)"  # 'a', "a"
            )
        else:
            self._short_word = self._short_value = None

    def suspicious(self, value: str) -> bool:
        """Whether ``value`` may need scrubbing: it holds a secret, a short one standing alone, or a credential's name.

        Most values need none, so this is the cheap test in front of
        :meth:`_scrub_text` (a regex alternation costs several times more).
        """
        # A credential's name matters only before a separator ("Secret:", "key=", "'Key', ").
        if ":" in value or "=" in value or "," in value:
            lowered = value.lower()
            if "secret" in lowered or "key" in lowered or "passw" in lowered or "credential" in lowered:
                return True
        if len(value) >= self._shortest_long:
            if self._many is not None:
                if self._many(value) is not None:
                    return True
            else:
                for secret in self._secrets:
                    if secret in value:
                        return True
        for secret in self._short:
            if secret in value:  # somewhere: as a value of its own only where the pattern finds it
                return self._short_word.search(value) is not None  # type: ignore[union-attr]
        return False

    def _scrub_text(self, value: str) -> str:
        """Replace secrets in a text that :meth:`suspicious` found something in."""
        if self._long is not None:
            # One pass: a secret is never looked for inside a "[redacted]" put in for another.
            value = self._long.sub(REDACTED, value)
        lowered = value.lower()
        if any(hint in lowered for hint in _NAME_HINTS):
            value = _INLINE_SECRET_RE.sub(_mask_credential, value)
        if self._short_value is not None:
            if value.strip() in self._short:
                return REDACTED
            value = self._short_value.sub(_mask_short, value)
        return value

    def _scrub(self, value: Any) -> Any:
        """``value`` with secrets replaced, containers rebuilt; a clean value is returned as it is."""
        if isinstance(value, str):  # str subclasses (e.g. str enums) too
            return self._scrub_text(value) if self.suspicious(value) else value
        if value is None or isinstance(value, (int, float)):  # bool, IntEnum: rendered as numbers
            return value
        if isinstance(value, dict):
            return {
                (self._scrub(k) if isinstance(k, str) else k): (
                    REDACTED if str(k).lower() in SENSITIVE_KEYS else self._scrub(v)
                )
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            if len(value) == 2 and isinstance(value[0], str) and value[0].lower() in SENSITIVE_KEYS:
                return type(value)((value[0], REDACTED))  # a (name, value) header pair
            return type(value)(self._scrub(v) for v in value)
        # Bytes, exceptions, objects: replaced by the text that is checked, so the renderer
        # never decides how to write one (orjson writes an Enum's value, not its str()).
        text = str(value)
        return self._scrub_text(text) if self.suspicious(text) else text

    def __call__(self, logger: Any, method: str, event_dict: dict) -> dict:
        # Audit records mark the fields the server itself produced (addresses,
        # ids, counters); everything else -- above all what a client typed --
        # is scrubbed.
        trusted = event_dict.pop(TRUSTED_FIELDS_KEY, ())
        suspicious = self.suspicious
        for name in event_dict.keys() - trusted if trusted else list(event_dict):
            value = event_dict[name]
            if name.lower() in SENSITIVE_KEYS:
                event_dict[name] = REDACTED
            elif value.__class__ is str:
                if suspicious(value):
                    event_dict[name] = self._scrub_text(value)
            elif value is not None and value.__class__ not in _PLAIN:
                event_dict[name] = self._scrub(value)
        return event_dict
