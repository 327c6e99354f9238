"""The ``config`` authentication backend: users from ``[users.<name>]`` in config.toml."""

from __future__ import annotations

import hashlib
import hmac
from typing import Mapping, Optional

from ami_server import AuthDecision, AuthRequest, hookimpl
from ami_server.config import UserConfig


def md5_key(challenge: str, secret: str) -> str:
    """The MD5 response a client sends: lower-case hex of md5(challenge + secret) (A-3.5)."""
    return hashlib.md5((challenge + secret).encode("utf-8", "surrogateescape")).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


class ConfigBackend:
    """Answers for the users listed in the configuration; ``None`` for anyone else."""

    def __init__(self, users: Mapping[str, UserConfig]) -> None:
        self.users = users

    @hookimpl
    def authenticate(self, request: AuthRequest) -> Optional[AuthDecision]:
        user = self.users.get(request.username.lower())
        if user is None:
            return None
        if request.auth_type == "md5":
            if not (request.key and request.challenge):
                return AuthDecision.reject()
            if _same(request.key, md5_key(request.challenge, user.secret)):
                return self._accept(user)
            return AuthDecision.reject("challenge_failed")
        if request.secret is not None and _same(request.secret, user.secret):
            return self._accept(user)
        return AuthDecision.reject("invalid_password")

    @staticmethod
    def _accept(user: UserConfig) -> AuthDecision:
        return AuthDecision.accept(user.read, user.write, user.allow_multiple_login)
