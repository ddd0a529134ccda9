"""An Authorizer that grants colab-guard's admin rights to named users or a JupyterHub scope.

colab-guard asks the server's Authorizer about two resources of its own:
``colab_guard`` (a user's own incidents, appeals, strikes) and
``colab_guard:admin`` (action "read": everyone's incidents; "write": resolve
appeals, clear strikes). jupyter_server's default Authorizer, and JupyterHub's,
allow everything to whoever may use the server, so on a shared service use
this one (``c.ServerApp.authorizer_class = "colab_guard.auth.GuardAuthorizer"``)
or a custom Authorizer that answers for ``colab_guard:admin``.
"""

from __future__ import annotations

from jupyter_server.auth.authorizer import Authorizer
from traitlets import Set, Unicode

ADMIN_RESOURCE = "colab_guard:admin"


class GuardAuthorizer(Authorizer):
    """Everything else allowed (as jupyter_server's and JupyterHub's authorizers do);
    colab-guard's admin rights only to ``admin_users`` or holders of ``admin_scope``."""

    admin_users = Set(Unicode(), config=True, help=(
        "User names (as the IdentityProvider reports them) with colab-guard admin rights."))

    admin_scope = Unicode("custom:colab-guard:admin", config=True, help=(
        "A JupyterHub scope that grants colab-guard admin rights when the user's token carries "
        "it (JupyterHub 3+ custom scopes). Empty: scopes grant nothing."))

    def is_authorized(self, handler, user, action: str, resource: str) -> bool:
        if resource != ADMIN_RESOURCE:
            return True
        return user.username in self.admin_users or self._has_scope(user)

    def _has_scope(self, user) -> bool:
        hub_user = getattr(user, "hub_user", None) or {}
        scopes = hub_user.get("scopes") or []
        return bool(self.admin_scope) and self.admin_scope in scopes
