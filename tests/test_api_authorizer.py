"""GuardAuthorizer: colab-guard admin rights for named users or a JupyterHub scope, nothing else changed."""

from __future__ import annotations

from dataclasses import dataclass, field

from jupyter_server.auth.identity import User

from colab_guard.auth import ADMIN_RESOURCE, GuardAuthorizer


@dataclass
class HubUser(User):
    """Like JupyterHub's single-user JupyterHubUser: the Hub's user model, with token scopes."""

    hub_user: dict = field(default_factory=dict)


def test_named_admins_and_scope_holders_get_admin_rights():
    authorizer = GuardAuthorizer(admin_users={"carol"})
    assert authorizer.is_authorized(None, User("carol"), "write", ADMIN_RESOURCE)
    scoped = HubUser("dave", hub_user={"scopes": ["access:servers", "custom:colab-guard:admin"]})
    assert authorizer.is_authorized(None, scoped, "read", ADMIN_RESOURCE)


def test_others_get_no_admin_rights_but_keep_everything_else():
    authorizer = GuardAuthorizer(admin_users={"carol"})
    plain = HubUser("alice", hub_user={"scopes": ["access:servers!user=alice",
                                                  "custom:colab-guard:admin-like"]})
    assert not authorizer.is_authorized(None, plain, "read", ADMIN_RESOURCE)
    assert not authorizer.is_authorized(None, User("bob"), "write", ADMIN_RESOURCE)
    assert authorizer.is_authorized(None, plain, "read", "colab_guard")
    assert authorizer.is_authorized(None, plain, "execute", "kernels")


def test_an_empty_scope_grants_nothing():
    authorizer = GuardAuthorizer(admin_scope="")
    assert not authorizer.is_authorized(None, HubUser("x", hub_user={"scopes": [""]}), "read",
                                        ADMIN_RESOURCE)
