"""Who is calling the admin API: the :class:`Actor` the authentication middleware attaches to
each admin request (``request.scope["state"]["actor"]``).

Two kinds of admin identity:

* the **bootstrap admin token** (``GATEWAY_ADMIN_TOKEN``): subject ``admin``, issuer
  :data:`BOOTSTRAP_ISSUER`, every role; for first setup, and can be switched off;
* a **JWT** from a configured admin issuer: subject = ``sub``, issuer = ``iss``, roles from the
  configured roles claim (names of :data:`ROLES`).

:attr:`Actor.name` is what records store as ``created_by`` / ``approved_by`` (``admin``, or
``<sub>@<iss>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from gateway.errors import AdminAuthFailed

__all__ = ["BOOTSTRAP", "BOOTSTRAP_ISSUER", "ROLES", "Actor", "actor_of"]

BOOTSTRAP_ISSUER = "urn:gateway:bootstrap-token"
ROLES = ("admin", "policy_author", "approver", "registry_editor", "auditor", "operator")
"""The admin API's roles (docs/admin-identity.md)."""


@dataclass(frozen=True, slots=True)
class Actor:
    """An authenticated admin caller."""

    subject: str
    issuer: str
    roles: frozenset[str] = field(default_factory=frozenset)
    decision_id: str | None = None
    """The id of the control-plane policy decision that allowed this request (None before it)."""

    @property
    def name(self) -> str:
        """What records store as ``created_by``/``approved_by`` and four-eyes compares:
        ``admin`` for the bootstrap token, else ``<sub>@<iss>`` (the same ``sub`` at two issuers
        is two people, and no JWT can pass for the bootstrap admin)."""
        return self.subject if self.bootstrap else f"{self.subject}@{self.issuer}"

    @property
    def bootstrap(self) -> bool:
        return self.issuer == BOOTSTRAP_ISSUER


BOOTSTRAP = Actor("admin", BOOTSTRAP_ISSUER, frozenset(ROLES))
"""The bootstrap admin token's actor."""


def actor_of(request: Request) -> Actor:
    """The actor of an admin request.

    Raises:
        AdminAuthFailed: No actor is attached (never past the authentication middleware):
            refused, never assumed to be the bootstrap admin.
    """
    state = request.scope.get("state") or {}
    actor = state.get("actor")
    if not isinstance(actor, Actor):
        raise AdminAuthFailed("a valid bearer token is required")
    return actor
