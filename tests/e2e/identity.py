"""A stand-in for JupyterHub's identity in the browser tests.

A plain Jupyter server names a token login "anonymous" with a random user name;
under JupyterHub the user has a fixed name, the one colab-guard records as the
incident's user. This provider gives token logins that fixed name, so the
browser session is the incident's own user (who may appeal it).
"""

from jupyter_server.auth.identity import IdentityProvider, User
from traitlets import Unicode


class FixedUserIdentityProvider(IdentityProvider):
    user_name = Unicode("alice", config=True, help="The user name every token login gets.")

    def generate_anonymous_user(self, handler) -> User:
        return User(username=self.user_name, name=self.user_name, display_name=self.user_name)
