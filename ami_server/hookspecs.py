"""The plugin contract: every hook ami-server calls, and what it promises.

Implement hooks with ``@ami_server.hookimpl`` in a module or class that is
registered either as a builtin or through the ``ami_server.actions`` entry
point group. An implementation may accept any subset of a hook's arguments.
Every hook but ``authenticate`` is called on the event loop thread and must
not block.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import pluggy

from .context import ServerHandle
from .records import Action, AuthDecision, AuthRequest, Event, SessionInfo

PROJECT_NAME = "ami_server"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_actions(server: ServerHandle) -> Optional[Sequence[Action]]:
    """Return the actions (and CLI commands) this plugin adds.

    Called once per server instance at start-up, after every plugin is
    loaded and before the listener opens. ``server`` may be kept to publish
    events later (also from other threads). Return a sequence of
    :class:`~ami_server.Action` records, and :class:`~ami_server.CliCommand`
    records for the ``Command`` action; ``None`` or an empty sequence adds
    nothing. An invalid record, an action name or CLI command that is
    already taken (case-insensitively) or an exception stops start-up with
    an error naming the plugin.
    """


@hookspec
def on_event(event: Event) -> None:
    """Observe every published event.

    Called on the loop after the event was handed to the sessions that
    receive it (Q-7.5), whether or not any session did. ``event`` is the
    frozen :class:`~ami_server.Event`. The return value is ignored. An
    exception is logged with the plugin's name and does not affect delivery
    or the other implementations.
    """


@hookspec(firstresult=True)
def authenticate(request: AuthRequest, config: Mapping[str, Any]) -> Optional[AuthDecision]:
    """Decide a Login: the authentication backend chain (first answer wins).

    Called for each Login with a non-empty ``Username`` on an unauthenticated
    session, only for plugins named in ``[auth] backends`` and in that order.
    Unlike the other hooks it runs in a worker thread, never on the event
    loop, so it may block (a database, a directory) but must be thread-safe.
    ``request`` carries the username, the plaintext secret or the MD5
    challenge and key, and the peer's addresses; ``config`` is the plugin's
    own ``[plugins.<name>]`` table. Return ``None`` when the user is not
    yours (the next backend is asked), ``AuthDecision.accept(...)`` with the
    user's read and write classes, or ``AuthDecision.reject(reason)``. When
    every backend returns ``None`` the login fails as an unknown user. An
    exception, a value that is not an ``AuthDecision``, or no answer within
    ``[auth] timeout`` seconds fails the login (fail closed) and is audited
    as ``AuthBackendError``; a late answer is ignored. The client sees the
    same ``Authentication failed`` whatever the cause (A-3.8, A-3.15). A
    backend that never blocks (an in-memory table) may set
    ``ami_server_nonblocking = True`` on its plugin object; when every
    backend in the chain does, the chain runs on the event loop instead.
    """


@hookspec
def on_session_open(session: SessionInfo) -> None:
    """A connection became a session.

    Called exactly once per accepted session, before the banner is sent.
    Connections refused by ``auth_limit`` are not sessions and do not call
    it. ``session`` is a read-only snapshot. An exception is logged and does
    not stop the other implementations or the session.
    """


@hookspec
def on_session_close(session: SessionInfo, reason: str) -> None:
    """A session ended.

    Called exactly once per session that ``on_session_open`` saw, whatever
    ended it. ``reason`` is one of ``logoff``, ``login failed``,
    ``login in use``, ``auth timeout``, ``slow consumer``, ``revoked``,
    ``peer closed``, ``I/O error``, ``shutdown`` (Q-7.9). An exception is
    logged and does not stop the other implementations.
    """
