"""Session control: what :class:`~ami_server.context.SessionControl` does, on the loop.

Only ``control`` actions (Login, Challenge, Events, Filter, WaitEvent,
ListCommands, the admin actions) and reload listeners reach it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from .filters import EventFilters
from .records import Action, ActionError, Deferred, Response, SessionInfo
from .security import new_challenge
from .session import ActionRun, Session

if TYPE_CHECKING:  # pragma: no cover
    from .core import SessionCore
    from .dispatch import Dispatcher
    from .login import LoginPolicy
    from .plugins import ActionRegistry
    from .protocol import Message

__all__ = ["ControlBackend", "ServerControl", "MAX_WAIT_SECONDS"]

#: The longest WaitEvent timeout (Asterisk's int seconds).
MAX_WAIT_SECONDS = 2147483647


class ControlBackend:
    """The session-control operations, given the session they act on."""

    def __init__(
        self,
        core: "SessionCore",
        login: "LoginPolicy",
        registry: Callable[[], "ActionRegistry"],
        reload: Callable[[], Tuple[bool, str]],
    ) -> None:
        self.core = core
        self.outbox = core.outbox
        self._login = login
        self._registry = registry
        self._reload = reload
        self.dispatcher: "Dispatcher"
        #: Plugins' lists of further actions for ListCommands (ServerHandle.add_action_lister).
        self.listers: List[Callable[[SessionInfo], Any]] = []
        #: Sessions of other servers for SessionList / SessionKick (ServerHandle.set_session_directory).
        self.directory: Any = None

    def login(self, session: Session, run: ActionRun, request: "Message") -> Any:
        return self._login.login(session, run, request)

    def challenge(self, session: Session) -> str:
        if session.challenge is None:
            session.challenge = new_challenge()
        return session.challenge

    def set_event_mask(self, session: Session, mask: int) -> None:
        self.outbox.settle()
        session.mask = mask
        session.changed()

    def add_event_filter(self, session: Session, pattern: Any, include: bool) -> None:
        self.outbox.settle()
        filters = session.filters or EventFilters()
        try:
            filters.add(pattern, include)
        except (TypeError, ValueError) as exc:
            raise ActionError(str(exc)) from None
        session.filters = filters

    def permitted_actions(self, session: Session) -> List[Action]:
        """Local and listed actions the session's classes and every guard allow, by name."""
        write = session.write
        actions = {entry.action.name.lower(): entry.action for entry in self._registry().all()}
        if self.listers:
            info = session.info()
            for lister in self.listers:
                for action in lister(info):
                    actions.setdefault(action.name.lower(), action)
        guarded = bool(self.dispatcher.guards)
        info = session.info()
        return [
            action
            for _, action in sorted(actions.items())
            if (not action.privileges or action.privileges & write)
            and not (guarded and self.dispatcher.denial(info, action.name, None))
        ]

    def wait_for_event(self, session: Session, run: ActionRun, timeout: Optional[float], reply: Response) -> Deferred:
        if timeout is not None and not (0 <= timeout <= MAX_WAIT_SECONDS):
            raise ValueError(f"wait_for_event timeout must be between 0 and {MAX_WAIT_SECONDS} seconds")
        deferred = Deferred()
        if timeout == 0 or session.parser.has_input or session.pending:
            deferred.complete(reply)
            return deferred
        run.wait_reply = reply
        if timeout is not None:
            run.timer = self.core.loop.call_later(timeout, lambda: deferred.complete(reply))
        return deferred

    def sessions(self) -> List[SessionInfo]:
        return self.core.infos()

    def kick(self, session_id: str, reason: str) -> bool:
        return self.core.revoke(session_id, reason)

    def set_classes(self, session_id: str, read: int, write: int) -> bool:
        return self.core.set_classes(session_id, read, write)

    def reload(self) -> Tuple[bool, str]:
        return self._reload()


class ServerControl:
    """The backend of a :class:`SessionControl` bound to no session (reload listeners)."""

    __slots__ = ("_control",)

    def __init__(self, control: ControlBackend) -> None:
        self._control = control

    def _no_session(self, *args: Any) -> Any:
        raise RuntimeError("this SessionControl is bound to no session")

    login = challenge = set_event_mask = add_event_filter = permitted_actions = wait_for_event = _no_session

    def sessions(self) -> List[SessionInfo]:
        return self._control.sessions()

    def kick(self, session_id: str, reason: str) -> bool:
        return self._control.kick(session_id, reason)

    def set_classes(self, session_id: str, read: int, write: int) -> bool:
        return self._control.set_classes(session_id, read, write)

    def reload(self) -> Tuple[bool, str]:
        return self._control.reload()

    def directory(self) -> Any:
        return self._control.directory
