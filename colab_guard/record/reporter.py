"""Reporting incidents to the hub service (README: "Reporting to the hub").

Every incident is sent to ``POST {hub_url}api/reports`` when it is detected and again
when its actions are done (the service keeps the last version of each id).

- The queue is on disk (SQLite, next to the incident database): nothing is lost while the
  service restarts, nor when this server or watcher restarts with incidents still queued.
  One row per incident: a newer version replaces the queued one. It is bounded
  (``hub_queue_size``): when full, the oldest incident is dropped, logged and counted.
- One background thread sends, in batches of up to 100, and retries with a capped
  exponential backoff after a connection error, a timeout, a redirect or any status but
  200/400/401/403. A 400, 401 or 403 is not retried: the batch is dropped, logged and
  counted (a 400 on a batch is retried one incident at a time, so that only the
  malformed one is lost).
- Queuing is one local SQLite write; the sampler and the actions never wait for the
  network.
- Sized for a proxy in front of the hub (nginx takes 1 MB a request by default): an incident
  is queued at most ``MAX_INCIDENT_BYTES`` long (its evidence cut, saying how much), a batch
  is at most ``MAX_BATCH_BYTES``, and a 413 is split like a 400. One incident a proxy refuses
  must not hold up every incident queued after it.
- A hub on loopback is only reached when the port is a system account's (root's, or a uid
  below ``first_user_uid``): a notebook user who binds the port while the service restarts
  gets neither the token nor the incidents (they stay queued, retried).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from . import metrics
from .incident import Incident

BATCH_SIZE = 100  # the contract's limit per request
NOT_RETRIED = (400, 401, 403, 413)
SPLIT = (400, 413)  # a batch refused with these is sent again one incident at a time
MAX_INCIDENT_BYTES = 256 * 2**10  # one queued incident's JSON, at most
MAX_BATCH_BYTES = 768 * 2**10  # one request's body, at most (under nginx's 1 MB default)
EVIDENCE_KEPT = 16  # processes and matches kept of an incident too large to send whole
FIRST_USER_UID = 1000  # uids from here on are people's: a hub port of theirs is not trusted
QUEUE_FILE = "hub-reports.sqlite"


class ReportQueue:
    """The incidents waiting to be sent, oldest first, on disk; at most ``limit``."""

    def __init__(self, path: str | Path, limit: int):
        self.path, self.limit = Path(path), limit
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable across a process crash
        db.execute("CREATE TABLE IF NOT EXISTS reports (seq INTEGER PRIMARY KEY "
                   "AUTOINCREMENT, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")
        return db

    def start_afresh(self) -> Path:
        """The file is no database (overwritten, corrupt): move it aside, start an empty one.
        What it held is lost; returns where it was moved."""
        with self._lock:
            self._db.close()
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    os.replace(source, f"{aside}{suffix}")
            self._db = self._open()
            return aside

    def put(self, incident_id: str, body: str) -> list[str]:
        """Queue (or replace) one incident; the ids of those dropped to keep the bound."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM reports WHERE id = ?", (incident_id,))
                self._db.execute("INSERT INTO reports (id, body) VALUES (?, ?)", (incident_id, body))
                excess = self._db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] - self.limit
                dropped = []
                if excess > 0:
                    oldest = self._db.execute("SELECT seq, id FROM reports ORDER BY seq LIMIT ?",
                                              (excess,)).fetchall()
                    self._db.executemany("DELETE FROM reports WHERE seq = ?",
                                         [(seq,) for seq, _ in oldest])
                    dropped = [i for _, i in oldest]
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return dropped

    def oldest(self, count: int) -> list[tuple[int, str, str]]:
        """Up to ``count`` queued (seq, id, body), oldest first."""
        with self._lock:
            return self._db.execute("SELECT seq, id, body FROM reports ORDER BY seq LIMIT ?",
                                    (count,)).fetchall()

    def of(self, incident_id: str) -> list[tuple[int, str, str]]:
        """The incident's queued (seq, id, body), if it waits to be sent."""
        with self._lock:
            return self._db.execute("SELECT seq, id, body FROM reports WHERE id = ?",
                                    (incident_id,)).fetchall()

    def remove(self, seqs: list[int]) -> None:
        """Remove these rows (by seq: an incident queued again meanwhile stays queued)."""
        with self._lock:
            self._db.executemany("DELETE FROM reports WHERE seq = ?", [(s,) for s in seqs])

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM reports").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect (a login page: a wrong URL or a proxy in the way) is an error, not followed."""

    def redirect_request(self, *args, **kwargs):
        return None


class HubReporter:
    """Sends the incidents to the hub service; a ``Recorder`` listener (``listen``)."""

    def __init__(self, hub_url: str, token: str, queue: ReportQueue, source: str,
                 log: logging.Logger | None = None, node: str | None = None,
                 timeout: float = 10.0, backoff: float = 1.0, backoff_max: float = 60.0,
                 first_user_uid: int = FIRST_USER_UID):
        self.url = hub_url + "api/reports"
        self.token, self.queue, self.source = token, queue, source
        self.node = node or socket.gethostname()
        self.log = log or logging.getLogger("colab_guard")
        self.timeout, self.backoff, self.backoff_max = timeout, backoff, backoff_max
        self.first_user_uid = first_user_uid
        # The hub service is reached directly: no proxy from the environment, no redirects.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # consecutive failed attempts
        self.counts = {"sent": 0, "refused": 0, "dropped": 0}
        self.last_error: str | None = None
        self.standing: dict[str, Any] | None = None  # the service's last word on this user
        metrics.HUB_REPORTS_QUEUED.set(len(queue))

    # ------------------------------------------------------------ the recorder's side

    def listen(self, incident: Incident, action: str = "") -> None:
        """Queue the incident (its current version) and wake the sender."""
        body = bounded_body(incident)  # ASCII JSON: any text goes out as valid UTF-8
        try:
            try:
                dropped = self.queue.put(incident.id, body)
            except sqlite3.DatabaseError as err:
                if not _unreadable(err) or not self._start_afresh(err):
                    raise
                dropped = self.queue.put(incident.id, body)
        except sqlite3.Error as err:
            metrics.HUB_REPORTS.labels("dropped").inc()
            self.counts["dropped"] += 1
            self.log.error("colab-guard: cannot queue incident %s for the hub (%s: %s); it is "
                           "not reported to the hub", incident.id, self.queue.path, err)
            return
        for incident_id in dropped:
            self.log.error("colab-guard: the hub report queue is full (%d incidents, "
                           "hub_queue_size): dropped the oldest, incident %s, unreported",
                           self.queue.limit, incident_id)
        if dropped:
            metrics.HUB_REPORTS.labels("dropped").inc(len(dropped))
            self.counts["dropped"] += len(dropped)
        metrics.HUB_REPORTS_QUEUED.set(len(self.queue))
        self._wake.set()

    # ------------------------------------------------------------ start and stop

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="colab-guard-hub-reports",
                                        daemon=True)
        self._thread.start()
        self._wake.set()  # whatever a previous run left queued

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending; what is queued stays on disk for the next start."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def scope(self) -> str:
        """The scope the contract asks of this reporter's token."""
        return "custom:colab-guard:report-any" if self.source == "watcher" else \
            "custom:colab-guard:report"

    def status(self) -> dict[str, Any]:
        try:
            queued = len(self.queue)
        except sqlite3.Error as err:  # the status still answers, and says why
            queued, self.last_error = None, f"the report queue {self.queue.path}: {err}"
        return {"enabled": True, "url": self.url, "queued": queued, **self.counts,
                "failures": self.failures, "last_error": self.last_error,
                "standing": self.standing}

    def _start_afresh(self, err: sqlite3.Error) -> bool:
        """A new, empty queue in place of an unreadable one; False if that failed too."""
        try:
            aside = self.queue.start_afresh()
        except (OSError, sqlite3.Error) as again:
            self.last_error = f"the report queue is unreadable ({err}) and cannot be replaced " \
                              f"({again})"
            return False
        self.last_error = f"the report queue was unreadable ({err}); moved aside to {aside}"
        self.log.error("colab-guard: the hub report queue %s was unreadable (%s): moved aside "
                       "to %s and started afresh; incidents queued in it are not reported",
                       self.queue.path, err, aside)
        return True

    # ------------------------------------------------------------ the sender

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stopping.is_set():
                try:
                    retry_at = self._send_queued()
                except Exception as err:  # the queue unreadable (disk errors): never end the thread
                    if isinstance(err, sqlite3.DatabaseError) and _unreadable(err) and \
                            self._start_afresh(err):
                        continue
                    self.log.exception("colab-guard: reporting to the hub failed; retried")
                    self.failures += 1
                    retry_at = time.monotonic() + self.backoff_max
                if not retry_at:
                    break
                # A backoff: incidents queued meanwhile wait for its end too.
                self._stopping.wait(max(0.0, retry_at - time.monotonic()))

    def _send_queued(self) -> float:
        """Send until the queue is empty (0.0) or an attempt fails (when to retry)."""
        while not self._stopping.is_set():
            batch = _within_bytes(self.queue.oldest(BATCH_SIZE), MAX_BATCH_BYTES)
            if not batch:
                return 0.0
            if not self._deliver(batch):
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    self.log.warning("colab-guard: cannot report to the hub at %s (%s); %d "
                                     "incident(s) queued, retried with backoff", self.url,
                                     self.last_error, len(self.queue))
                delay = min(self.backoff_max, self.backoff * 2 ** min(self.failures - 1, 30))
                return time.monotonic() + delay * random.uniform(0.8, 1.0)
            if self.failures:
                self.log.info("colab-guard: reporting to the hub again after %d failed "
                              "attempt(s)", self.failures)
                self.failures = 0
            metrics.HUB_REPORTS_QUEUED.set(len(self.queue))
        return 0.0

    def _deliver(self, batch: list[tuple[int, str, str]]) -> bool:
        """One request; True if the batch is settled (taken, or refused for good)."""
        squatted = untrusted_listener(self.url, self.first_user_uid)
        if squatted:
            self.last_error = squatted  # logged as a failure to report, retried
            metrics.HUB_REPORT_ERRORS.inc()
            return False
        body = ('{"source": %s, "node": %s, "incidents": [%s]}' % (
            json.dumps(self.source), json.dumps(self.node), ", ".join(b for _, _, b in batch)))
        request = urllib.request.Request(self.url, data=body.encode("utf-8"), method="POST",
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            if err.code in SPLIT and len(batch) > 1:  # find the malformed one, send the rest
                return all([self._deliver([row]) for row in batch])
            if err.code in NOT_RETRIED:
                self._refused(batch, err)
                return True
            self.last_error = f"HTTP {err.code} {err.reason}"
            metrics.HUB_REPORT_ERRORS.inc()
            return False
        except (OSError, ValueError) as err:  # refused, reset, timed out, not JSON
            cause = err.reason if isinstance(err, urllib.error.URLError) else err
            self.last_error = f"{type(cause).__name__}: {cause}"
            metrics.HUB_REPORT_ERRORS.inc()
            return False
        self.queue.remove([seq for seq, _, _ in batch])
        self.counts["sent"] += len(batch)
        metrics.HUB_REPORTS.labels("sent").inc(len(batch))
        if isinstance(answer, dict) and "strikes" in answer:
            self.standing = {k: answer.get(k) for k in ("strikes", "strike_limit", "banned")}
        self.last_error = None
        return True

    def appeal(self, incident_id: str, text: str) -> dict[str, Any]:
        """Send the user's appeal of an incident to the hub service, where the admins who
        can lift hub-wide strikes see it (blocking: call it in a thread). Its queued
        version goes first, so that the service knows the incident. Says what came of it:
        {"forwarded": True} or {"forwarded": False, "error": why}."""
        queued = self.queue.of(incident_id)
        if queued and not self._deliver(queued):
            return {"forwarded": False, "error": f"the hub cannot be reached ({self.last_error})"}
        url = self.url[:-len("reports")] + \
            f"incidents/{urllib.parse.quote(incident_id, safe='')}/appeal"
        request = urllib.request.Request(url, data=json.dumps({"text": text}).encode("utf-8"),
                                         method="POST",
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout):
                return {"forwarded": True}
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read(2000) or b"{}").get("message", "")
            except (OSError, ValueError, AttributeError):
                message = ""
            return {"forwarded": False, "error": f"the hub answered HTTP {err.code}"
                    + (f": {message}" if message else "")}
        except (OSError, ValueError) as err:
            cause = err.reason if isinstance(err, urllib.error.URLError) else err
            return {"forwarded": False, "error": f"the hub cannot be reached ({cause})"}

    def _refused(self, batch: list[tuple[int, str, str]], err: urllib.error.HTTPError) -> None:
        try:
            message = err.read(500).decode("utf-8", "replace")
        except OSError:
            message = ""
        self.last_error = f"HTTP {err.code}: {message[:200]}"
        self.log.error("colab-guard: the hub refused %d incident(s) (%s) with HTTP %d %s: %s; "
                       "not retried%s", len(batch), ", ".join(i for _, i, _ in batch[:5]),
                       err.code, err.reason, ascii(message),
                       f" (is the hub token right, and does it have the scope "
                       f"{self.scope}?)" if err.code in (401, 403) else "")
        self.queue.remove([seq for seq, _, _ in batch])
        self.counts["refused"] += len(batch)
        metrics.HUB_REPORTS.labels("refused").inc(len(batch))


def _unreadable(err: sqlite3.DatabaseError) -> bool:
    """No database there (overwritten, corrupt), rather than a busy or full disk."""
    return not isinstance(err, sqlite3.OperationalError)


def bounded_body(incident: Incident) -> str:
    """The incident's JSON (ASCII), at most MAX_INCIDENT_BYTES: else its evidence is cut to
    the first processes and matches, saying how many there were (the hub keeps the user,
    the category, the actions and the strike whatever the evidence)."""
    data = incident.to_dict()
    body = json.dumps(data)
    if len(body) <= MAX_INCIDENT_BYTES:
        return body
    evidence = dict(data.get("evidence") or {})
    for key in ("processes", "matches"):
        if isinstance(evidence.get(key), list):
            evidence[f"{key}_total"] = len(evidence[key])
            evidence[key] = evidence[key][:EVIDENCE_KEPT]
    evidence["truncated"] = "cut to fit a report; the full evidence is in the node's database"
    data["evidence"], data["actions"] = evidence, data["actions"][:BATCH_SIZE]
    body = json.dumps(data)
    if len(body) > MAX_INCIDENT_BYTES:  # still too large: the evidence is left out
        data["evidence"] = {"truncated": evidence["truncated"],
                            **{k: v for k, v in evidence.items() if k.endswith("_total")}}
        body = json.dumps(data)
    return body


def _within_bytes(batch: list[tuple[int, str, str]], limit: int) -> list[tuple[int, str, str]]:
    """The first rows of the batch whose bodies fit ``limit`` together (one at least)."""
    size = 0
    for i, (_, _, body) in enumerate(batch):
        size += len(body) + 2
        if size > limit and i:
            return batch[:i]
    return batch


def untrusted_listener(url: str, first_user_uid: int) -> str | None:
    """Why the hub's loopback port is not to be trusted (a user's program listens there),
    or None. A hub on another host, or a port nothing here listens on, is not checked."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for uid in _listener_uids(port):
        if uid >= first_user_uid:
            return (f"the hub's port {port} on loopback is held by uid {uid}, a user's "
                    "program, not the hub service")
    return None


def _listener_uids(port: int) -> set[int]:
    """The owners of the TCP sockets listening on ``port`` (any address) in this network
    namespace (/proc/net/tcp and tcp6)."""
    uids = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 7 and fields[3] == "0A" and \
                    int(fields[1].rsplit(":", 1)[1], 16) == port:
                uids.add(int(fields[7]))
    return uids


def queue_path(database_url: str) -> Path:
    """The queue's file: beside the incident database."""
    from .database import sqlite_path

    return sqlite_path(database_url).parent / QUEUE_FILE


def build_reporter(settings, source: str, log: logging.Logger | None = None,
                   first_user_uid: int = FIRST_USER_UID) -> HubReporter | None:
    """The reporter the settings ask for (None: no hub_url, no reporting)."""
    if not settings.hub_url:
        return None
    if not settings.hub_api_token:
        raise ValueError("hub_url is set but there is no hub_api_token (nor "
                         "$JUPYTERHUB_API_TOKEN): the hub would refuse every report")
    try:
        queue = ReportQueue(queue_path(settings.database_url), settings.hub_queue_size)
    except (OSError, sqlite3.Error) as err:
        raise ValueError(f"the hub report queue beside the incident database cannot be "
                         f"opened: {err}") from None
    return HubReporter(settings.hub_url, settings.hub_api_token, queue, source, log=log,
                       first_user_uid=first_user_uid)
