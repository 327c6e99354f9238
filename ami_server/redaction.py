"""Scrubbing secrets out of log records (A-3.16, D-8.8).

A separate module because it is the one place that decides what counts as a
secret in a record; both the structlog processor chain and the cached JSON
audit writer (:mod:`ami_server.audit_json`) call the same
:class:`Redactor`, so the two paths scrub alike by construction.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

__all__ = ["REDACTED", "SENSITIVE_KEYS", "TRUSTED_FIELDS_KEY", "Redactor"]

REDACTED = "[redacted]"
#: Field names whose values are never logged, whatever they hold (A-3.16, D-8.8).
SENSITIVE_KEYS = frozenset(
    {"secret", "key", "secret_hash", "password", "expected_response", "expectedresponse", "credentials"}
)

# "Secret: x", "key=x", "'Key': 'x'" inside free text (a logged request line, a repr).
_INLINE_SECRET_RE = re.compile(
    r"""(?i)((?:secret|key|secret_hash)['"]?\s*[:=]\s*['"]?)[^\s'",}\])]+"""
)

#: A record field naming the other fields of that record that need no scrubbing.
TRUSTED_FIELDS_KEY = "_trusted_fields"


class Redactor:
    """A structlog processor that removes secrets from every record.

    Values of sensitive field names are replaced, and any configured secret
    that appears inside another value is replaced too, so that a plugin that
    logs a whole request cannot leak one. A secret shorter than
    ``WHOLE_WORD_BELOW`` characters is replaced only where it stands alone
    (not inside a longer word), or a secret like ``x`` would mangle every
    record that contains the letter.
    """

    WHOLE_WORD_BELOW = 4
    #: Up to this many secrets, :meth:`suspicious` looks for each with ``in``.
    FEW_SECRETS = 16

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self._known: frozenset = frozenset()
        #: Counts changes of the secrets: text scrubbed under an older generation is stale.
        self.generation = 0
        self._short: Optional[re.Pattern] = None
        self.set_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Redact these too; secrets already known stay redacted (a reload never forgets one)."""
        self.set_secrets([*self._known, *secrets])

    def set_secrets(self, secrets: Iterable[str]) -> None:
        self.generation += 1
        unique = {s for s in secrets if s}
        self._known = frozenset(unique)
        # Longest first so that a secret containing another is replaced whole.
        self._secrets = tuple(
            sorted((s for s in unique if len(s) >= self.WHOLE_WORD_BELOW), key=len, reverse=True)
        )
        short = sorted((s for s in unique if len(s) < self.WHOLE_WORD_BELOW), key=len, reverse=True)
        self._short = (
            re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, short)) + r")(?![A-Za-z0-9])")
            if short else None
        )
        # A few secrets are looked for with ``in``; many, with one regex scan.
        self._many = (
            re.compile("|".join(map(re.escape, self._secrets))).search
            if len(self._secrets) > self.FEW_SECRETS else None
        )

    def suspicious(self, value: str) -> bool:
        """Whether ``value`` needs scrubbing: it holds a secret, a short secret or a "secret"/"key" hint.

        Most values need none, so this is the cheap test in front of
        :meth:`_scrub_text` (a regex alternation costs several times more).
        """
        lowered = value.lower()
        if "secret" in lowered or "key" in lowered:
            return True
        if self._many is not None:
            if self._many(value) is not None:
                return True
        else:
            for secret in self._secrets:
                if secret in value:
                    return True
        return self._short is not None and self._short.search(value) is not None

    def _scrub_text(self, value: str) -> str:
        """Replace secrets in a text that :meth:`suspicious` found something in."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        if self._short is not None:
            value = self._short.sub(REDACTED, value)
        lowered = value.lower()
        if "secret" in lowered or "key" in lowered:
            value = _INLINE_SECRET_RE.sub(lambda m: m.group(1) + REDACTED, value)
        return value

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):  # str subclasses (e.g. str enums) too
            return self._scrub_text(value) if self.suspicious(value) else value
        if value is None or value.__class__ in (int, float, bool):
            return value
        if isinstance(value, dict):
            return {
                k: (REDACTED if str(k).lower() in SENSITIVE_KEYS else self._scrub(v))
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            if len(value) == 2 and isinstance(value[0], str) and value[0].lower() in SENSITIVE_KEYS:
                return type(value)((value[0], REDACTED))  # a (name, value) header pair
            return type(value)(self._scrub(v) for v in value)
        return value

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
            elif value.__class__ is not bool and value.__class__ is not int:
                event_dict[name] = self._scrub(value)
        return event_dict
