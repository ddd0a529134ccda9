"""A real JupyterHub for the hub service's tests: configurable-http-proxy, the service managed
by the hub through ``configure(c)``, Unix users of the tests' own, and LocalProcessSpawner
running each user's single-user server as that user.

Needs root (CI runs as root), ``useradd`` and ``configurable-http-proxy`` (npm; ``.ci/run``
installs it). The users' servers run ``/usr/bin/python3`` when this environment's
interpreter lies where they cannot read it, with this environment's packages on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from tests.harness import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def can_run_a_hub() -> str | None:
    """Why a real hub cannot run here (None: it can)."""
    if os.geteuid() != 0 or not Path("/usr/sbin/useradd").exists():
        return "the hub's tests create Unix users and run servers as them: root only"
    if shutil.which("configurable-http-proxy") is None:
        return "configurable-http-proxy (npm) is not installed"
    if python_for_users() is None:
        return "no Python interpreter with this environment's packages that a test user can run"
    return None


POSTGRES_URL = os.environ.get("COLAB_GUARD_TEST_POSTGRES_URL", "")


def empty_postgres(url: str) -> str:
    """The database at ``url`` emptied (its public schema made anew); the URL."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def python_for_users() -> str | None:
    """This interpreter if every user can run it, else the system's of the same version."""
    base = os.path.realpath(sys.executable)
    if all(os.stat(folder).st_mode & 0o005 == 0o005 for folder in Path(base).parents):
        return sys.executable
    system = "/usr/bin/python3"
    if not Path(system).exists():
        return None
    found = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True)
    return system if found.stdout.strip() == str(tuple(sys.version_info[:2])) else None


def add_user(name: str) -> pwd.struct_passwd:
    remove_user(name)  # left over by an interrupted run
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
    return pwd.getpwnam(name)


def remove_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for proc in psutil.process_iter(["uids"]):  # only this test user's processes
        if proc.info["uids"] and proc.info["uids"].real == uid:
            proc.kill()
    subprocess.run(["userdel", "-r", name], capture_output=True)


class Response:
    def __init__(self, status: int, body: bytes, headers):
        self.status, self.body, self.headers = status, body, headers

    @property
    def json(self):
        return json.loads(self.body) if self.body else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def call(method: str, url: str, token: str | None = None, body=None,
         timeout: float = 60) -> Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Response(response.status, response.read(), response.headers)
    except urllib.error.HTTPError as err:
        return Response(err.code, err.read(), err.headers)


class Hub:
    """``jupyterhub`` in a temporary folder, with colab-guard's ``configure(c)``."""

    def __init__(self, admin: str, hub_settings: dict | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="cg-hub-"))
        self.port, self.hub_port = free_port(), free_port()
        self.proxy_api_port, self.service_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/hub/api"
        self.service_url = f"http://127.0.0.1:{self.service_port}"
        self.base = f"{self.url}/services/colab-guard/"  # through the proxy
        self.token = secrets.token_hex(32)  # the tests' own service: admin rights
        self.watcher_token = secrets.token_hex(32)
        self.admin = admin
        python = python_for_users()
        user_path = [str(ROOT)]
        if python != sys.executable:
            import site

            user_path += site.getsitepackages()
        settings = {"db_url": f"sqlite:///{self.dir / 'colab-guard-hub.sqlite'}",
                    "service_url": self.service_url, "watcher_api_token": self.watcher_token,
                    "warning_message": "The platform's message.", **(hub_settings or {})}
        (self.dir / "jupyterhub_config.py").write_text(textwrap.dedent(f"""
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {self.hub_port}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
            c.JupyterHub.db_url = "sqlite:///{self.dir / 'jupyterhub.sqlite'}"
            c.JupyterHub.cookie_secret_file = "{self.dir / 'cookie_secret'}"
            c.JupyterHub.authenticator_class = "dummy"
            c.Authenticator.allow_all = True
            c.Authenticator.admin_users = {{{admin!r}}}
            c.JupyterHub.spawner_class = "localprocess"
            c.Spawner.cmd = [{python!r}, "-m", "jupyterhub.singleuser"]
            # The servers run colab-guard (their guard reports to the service) whichever
            # interpreter they have: its server extension enabled from the checkout's config.
            c.Spawner.environment = {{"PYTHONPATH": {os.pathsep.join(user_path)!r},
                                     "JUPYTER_CONFIG_PATH": {str(ROOT / "jupyter-config")!r}}}
            c.Spawner.start_timeout = 180
            c.Spawner.http_timeout = 180
            c.JupyterHub.services = [{{"name": "cg-tests", "api_token": {self.token!r}}}]
            c.JupyterHub.load_roles = [{{"name": "cg-tests", "services": ["cg-tests"],
                "scopes": ["admin:users", "admin:servers", "admin:server_state", "tokens",
                           "read:roles"]}}]
            c.ColabGuardHub.update({settings!r})

            from colab_guard.hub import configure
            configure(c)
        """))
        self.process: subprocess.Popen | None = None

    def log(self) -> str:
        path = self.dir / "hub.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 180) -> Hub:
        log = open(self.dir / "hub.log", "wb")  # noqa: SIM115 (the hub writes it until it stops)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f",
                                         str(self.dir / "jupyterhub_config.py")],
                                        cwd=self.dir, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"the hub exited:\n{self.log()[-4000:]}")
            try:
                hub = call("GET", f"{self.api}/", timeout=5).status == 200
                return hub and call("GET", f"{self.base}metrics", timeout=5).status == 200
            except OSError:
                return False

        wait_until(up, timeout, 0.3, "the hub, its proxy and colab-guard's service up")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the hub, its proxy and services
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ the hub's API

    def hub(self, method: str, path: str, body=None, token: str | None = None) -> Response:
        return call(method, f"{self.api}/{path}", token or self.token, body)

    def service(self, method: str, path: str, token: str | None, body=None) -> Response:
        return call(method, f"{self.base}{path}", token, body)

    def token_for(self, user: str, scopes: list[str] | None = None) -> str:
        body = {"note": "colab-guard tests", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        response = self.hub("POST", f"users/{user}/tokens", body)
        assert response.status == 201, response.text
        return response.json["token"]

    def create_users(self, *names: str) -> None:
        response = self.hub("POST", "users", {"usernames": list(names)})
        assert response.status in (201, 409), response.text

    def server(self, user: str) -> dict | None:
        return (self.hub("GET", f"users/{user}").json.get("servers") or {}).get("")

    def spawn(self, user: str) -> Response:
        return self.hub("POST", f"users/{user}/server")

    def wait_ready(self, user: str, timeout: float = 180) -> dict:
        return wait_until(lambda: (s := self.server(user)) and s.get("ready") and s, timeout,
                          0.5, f"{user}'s server ready")

    def wait_stopped(self, user: str, timeout: float = 120) -> None:
        wait_until(lambda: self.server(user) is None, timeout, 0.5, f"{user}'s server stopped")

    def server_env(self, user: str) -> dict[str, str]:
        """The running server's environment (root reads /proc/PID/environ)."""
        pid = self.server(user)["state"]["pid"]
        pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)

    def server_token(self, user: str) -> str:
        """The running server's own JUPYTERHUB_API_TOKEN (what its guard reports with)."""
        return self.server_env(user)["JUPYTERHUB_API_TOKEN"]
