"""The ``config`` authentication backend: users from ``[users.<name>]`` in config.toml."""

from __future__ import annotations

import hashlib
import hmac
from typing import Dict, Mapping, Optional, Tuple

from ami_server import (
    AuthDecision,
    AuthRequest,
    Config,
    SecretHash,
    ServerHandle,
    SessionControl,
    UserConfig,
    ascii_lower,
    hookimpl,
    parse_secret_hash,
    verify_secret,
)


def md5_key(challenge: str, secret: str) -> str:
    """The MD5 response a client sends: lower-case hex of md5(challenge + secret) (A-3.5)."""
    return hashlib.md5((challenge + secret).encode("utf-8", "surrogateescape")).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


class ConfigBackend:
    """Answers for the users listed in the configuration; ``None`` for anyone else.

    The checks follow A-3.4: unknown user, then the address ACL, then the
    credentials. ``secret_hash`` users can only log in with a plaintext
    ``Secret``: an MD5 key cannot be checked against a one-way hash (A-3.5).
    One object per server (the plugin host instantiates the class). A
    reload swaps the whole user table at once and closes or re-classes the
    sessions of users that changed (D-8.9). With plaintext secrets only it
    never blocks, so it says so (``ami_server_nonblocking``) and logins are
    decided on the loop; a ``secret_hash`` (scrypt, ~50 ms) sends the chain
    to the auth worker threads.
    """

    def __init__(self) -> None:
        self._state: Tuple[Mapping[str, UserConfig], Dict[str, SecretHash]] = ({}, {})
        self.ami_server_nonblocking = True

    @property
    def users(self) -> Mapping[str, UserConfig]:
        return self._state[0]

    def use_users(self, users: Mapping[str, UserConfig]) -> None:
        """Answer for ``users`` from now on (start-up, reload, and tests that ask the backend directly)."""
        hashes = {key: parse_secret_hash(user.secret_hash) for key, user in users.items() if user.secret_hash}
        self._state = (users, hashes)  # one assignment: a concurrent login sees old or new, never a mix
        self.ami_server_nonblocking = not hashes

    @hookimpl
    def register_actions(self, server: ServerHandle) -> None:
        self.use_users(server.config.users)
        server.on_reload(self._reloaded)

    def _reloaded(self, config: Config, control: SessionControl) -> None:
        """D-8.9 for the sessions this backend accepted: close or re-class those whose user changed."""
        old = self.users
        self.use_users(config.users)
        for info in control.sessions():
            if info.backend != "config" or not info.authenticated:
                continue
            key = ascii_lower(info.username)
            before, after = old.get(key), config.users.get(key)
            reason = None
            if after is None:
                reason = "user removed"
            elif not after.enabled:
                reason = "user disabled"
            elif before is None or (before.secret, before.secret_hash) != (after.secret, after.secret_hash):
                reason = "secret changed"
            elif not after.acl.allows(info.peer_ip):
                reason = "denied by ACL"
            if reason is not None:
                control.kick(info.session_id, reason)
            else:
                control.set_classes(info.session_id, after.read, after.write)

    @hookimpl
    def authenticate(self, request: AuthRequest) -> Optional[AuthDecision]:
        users, hashes = self._state
        key = ascii_lower(request.username)  # ASCII only, as strcasecmp
        user = users.get(key)
        if user is None:
            return None
        if not user.enabled:
            return AuthDecision.reject("unknown_user", detail="user disabled")
        if not user.acl.allows(request.peer_ip):
            return AuthDecision.reject("acl_denied", detail=f"{request.peer_ip} not allowed by the user's ACL")
        if request.auth_type == "md5":
            if user.secret_hash:
                return AuthDecision.reject(detail="MD5 login for a user with secret_hash (no plaintext to hash)")
            if not (request.key and request.challenge):
                return AuthDecision.reject(detail="MD5 login without a challenge or key")
            if _same(request.key, md5_key(request.challenge, user.secret)):
                return self._accept(user)
            return AuthDecision.reject("challenge_failed")
        if request.secret is None:
            return AuthDecision.reject("invalid_password", detail="no Secret header")
        if user.secret_hash:
            if verify_secret(request.secret, hashes[key]):
                return self._accept(user)
        elif _same(request.secret, user.secret):
            return self._accept(user)
        return AuthDecision.reject("invalid_password")

    @staticmethod
    def _accept(user: UserConfig) -> AuthDecision:
        return AuthDecision.accept(
            user.read, user.write, user.allow_multiple_login, user.require_tls_for_plaintext, user.attributes
        )
