"""The node watcher's parts on data: process events parsed, kernels elected, the user of an
incident, processes spared. No root needed (test_watch.py runs the real thing as root)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import psutil

from colab_guard.act.enforce import stop_processes
from colab_guard.observe import procfs
from colab_guard.observe.model import Process
from colab_guard.watch import proc_events
from colab_guard.watch.kernels import NodeKernels, Seen
from tests.harness import wait_for
from tests.test_monitor_offline import build, tick_through

# ---------------------------------------------------------------- process events


def _message(what: int, *data: int, fmt: str) -> bytes:
    event = proc_events.EVENT_HEAD.pack(what, 0, 123) + struct.pack(fmt, *data)
    cn = proc_events.CN_MSG.pack(1, 1, 0, 0, len(event), 0)
    body = cn + event
    return proc_events.NLMSGHDR.pack(16 + len(body), 3, 0, 0, 0) + body


def test_fork_exec_and_exit_events_are_parsed():
    datagram = (_message(proc_events.PROC_EVENT_FORK, 10, 10, 11, 11, fmt="=iiii")
                + _message(proc_events.PROC_EVENT_EXEC, 11, 11, fmt="=ii")
                + _message(0x200, 11, 11, 0, 0, fmt="=iiII")  # a new comm: not used
                + _message(proc_events.PROC_EVENT_UID, 12, 11, 1001, 1001, fmt="=iiII")
                + _message(proc_events.PROC_EVENT_EXIT, 11, 11, 0, 17, fmt="=iiII"))
    assert list(proc_events.parse(datagram)) == [
        ("fork", 10, 11, 11), ("exec", 11), ("uid", 11), ("exit", 11, 11)]


def test_a_truncated_datagram_yields_what_is_whole():
    whole = _message(proc_events.PROC_EVENT_EXEC, 5, 5, fmt="=ii")
    assert list(proc_events.parse(whole + whole[:20])) == [("exec", 5)]
    assert list(proc_events.parse(b"\x00" * 8)) == []


def test_the_listen_message_is_what_the_connector_expects():
    message = proc_events.listen_message()
    length, kind, _, _, _ = proc_events.NLMSGHDR.unpack_from(message)
    assert length == len(message) == 40 and kind == proc_events.NLMSG_DONE
    assert proc_events.CN_MSG.unpack_from(message, 16)[:2] == (1, 1)  # CN_IDX_PROC, CN_VAL_PROC
    assert struct.unpack_from("=I", message, 36) == (proc_events.PROC_CN_MCAST_LISTEN,)


# ---------------------------------------------------------------- electing kernels


def _node(*seen: Seen) -> NodeKernels:
    node = NodeKernels(min_uid=1000)
    node._seen = {s.pid: (1, s) for s in seen}
    node._elect()
    return node


SERVER = Seen(100, start=10, ppid=1, uid=54321)


def test_the_kernel_is_the_oldest_carrier_under_a_parent_that_does_not_carry_it():
    kernel = Seen(200, start=20, ppid=100, uid=54321, marker="k1")
    child = Seen(201, start=21, ppid=200, uid=54321, marker="k1")
    orphan = Seen(300, start=30, ppid=1, uid=54321, marker="k1")  # double-forked
    node = _node(SERVER, kernel, child, orphan)
    assert node.pids() == {"k1": 200}


def test_root_and_system_users_are_never_kernels():
    node = _node(SERVER, Seen(200, start=20, ppid=100, uid=0, marker="k1"),
                 Seen(201, start=21, ppid=100, uid=999, marker="k2"))
    assert node.pids() == {}


def test_an_exited_kernels_id_goes_to_a_restart_by_its_server_not_to_an_orphan():
    kernel = Seen(200, start=20, ppid=100, uid=54321, marker="k1")
    orphan = Seen(300, start=30, ppid=1, uid=54321, marker="k1")
    node = _node(SERVER, kernel, orphan)
    node.attributed = {"k1"}  # the orphan is the kernel's, as the sampler says
    node._seen = {s.pid: (1, s) for s in (SERVER, orphan)}  # the kernel exits
    node._elect()
    assert node.pids() == {"k1": 0}  # retired: its processes stay attributed, no pid
    assert "k1" not in node and node.user_of("k1")
    restarted = Seen(400, start=40, ppid=100, uid=54321, marker="k1")
    node._seen[400] = (1, restarted)
    node._elect()
    assert node.pids() == {"k1": 400}


def test_a_retired_kernel_is_forgotten_once_nothing_of_it_lives():
    kernel = Seen(200, start=20, ppid=100, uid=54321, marker="k1")
    node = _node(SERVER, kernel)
    node._seen = {100: (1, SERVER)}
    node._elect()
    assert node.pids() == {} and node.kernel("k1") is None


def test_the_user_is_the_uids_never_a_name_the_kernels_environment_claims():
    # JUPYTERHUB_USER is in the user's own environment: naming someone else must not put
    # the incident (and its strike) on them.
    kernel = Seen(200, start=20, ppid=100, uid=54321, marker="k1", hub_user="ada")
    assert _node(SERVER, kernel).user_of("k1") == "uid-54321"


# ---------------------------------------------------------------- the monitor


class UserKernels:
    def user_of(self, kernel_id):
        return "grace"


async def test_the_incident_names_the_user_the_kernels_adapter_knows(tmp_path):
    monitor, kernels, store, _ = build(tmp_path, "miner-renamed", stop_grace=0.1)
    kernels.user_of = UserKernels().user_of
    await tick_through(monitor, 4)
    [incident] = store.query()
    assert incident.user == "grace"
    await monitor.stop()


def test_a_process_the_adapter_refuses_is_never_signalled():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        created = procfs.start_time(proc.pid)
        offender = Process(pid=proc.pid, ppid=os.getpid(), name="python", create_time=created)
        [action] = stop_processes([offender], 0.1, set(), may_signal=lambda p: False)
        assert action.outcome == "failed" and "spared" in action.detail
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_process_groups_members_are_found_with_their_uids():
    from colab_guard.watch.kernels import group_members

    members = group_members(os.getpgid(0))
    assert members[os.getpid()] == os.getuid()


async def test_execs_bring_two_looks_and_a_burst_one_look_every_look_again():
    import asyncio

    class Monitor:
        woken = 0

        def check_soon(self):
            self.woken += 1

    events = proc_events.ProcEvents.__new__(proc_events.ProcEvents)
    events.loop, events.monitor = asyncio.get_running_loop(), Monitor()
    events._named, events._look = {}, None
    me = [os.getpid()]  # a program that lives on
    events._look_soon(me)  # one exec: no pass at once (checked at its exec), two looks after
    assert events.monitor.woken == 0 and events._look is not None
    await wait_for(lambda: events.monitor.woken == 2, timeout=3, interval=0.01)
    await wait_for(lambda: events._look is None, timeout=3, interval=0.01)
    await asyncio.sleep(proc_events.LOOK_AGAIN + 0.1)
    assert events.monitor.woken == 2  # and no more
    # A burst: 30 execs 20 ms apart (0.6 s) brings a look every LOOK_AGAIN s, not one each.
    began = events.loop.time()
    for _ in range(30):
        events._look_soon(me)
        await asyncio.sleep(0.02)
    await wait_for(lambda: events._look is None, timeout=5, interval=0.01)
    looks = events.monitor.woken - 2
    span = events.loop.time() - began
    assert 2 <= looks <= span / proc_events.LOOK_AGAIN + 1, (looks, span)
    # Programs that have exited by then (/bin/true in a loop) need no look.
    gone = subprocess.Popen(["true"])
    gone.wait()
    woken = events.monitor.woken
    events._look_soon([gone.pid])
    await wait_for(lambda: events._look is None, timeout=3, interval=0.01)
    assert events.monitor.woken == woken


def test_without_the_connector_the_watcher_says_so_once_and_polls(monkeypatch, caplog):
    import asyncio
    import logging

    def refused():
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(proc_events, "open_socket", refused)

    class Monitor:
        class settings:
            sample_interval = 1.0

    log = logging.getLogger("colab_guard.test-watch")
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.WARNING, logger=log.name):
            assert proc_events.ProcEvents.start(loop, Monitor(), log) is None
    finally:
        loop.close()
    assert caplog.text.count("the process events connector is unavailable") == 1
    assert "scanning /proc every 1s" in caplog.text


def test_the_watch_command_takes_watcher_options_and_refuses_bad_ones(capsys, tmp_path):
    import pytest

    from colab_guard.cli import main

    assert main(["watch", "--Watcher.strike_limt=1"]) == 2
    assert "Watcher.strike_limt is not a setting of the watcher" in capsys.readouterr().err
    assert main(["watch", "--watch-config", str(tmp_path / "nowhere.py")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # other commands take no such options
        main(["signatures", "list", "--Watcher.min_uid=5"])
    assert "unrecognized arguments: --Watcher.min_uid=5" in capsys.readouterr().err


# ---------------------------------------------------------------- terminals, kernels unmarked


def test_a_terminal_shell_of_a_users_server_is_a_kernel_of_its_own():
    server = Seen(pid=500, start=1, ppid=1, uid=60001, server=True)
    shell = Seen(pid=510, start=5, ppid=500, uid=60001, tty=34816, term=True)
    node = _node(server, shell,
                 Seen(pid=520, start=6, ppid=500, uid=60001, term=True),  # no tty: no terminal
                 Seen(pid=530, start=7, ppid=500, uid=60002, tty=34817, term=True),  # not its uid
                 Seen(pid=540, start=8, ppid=1, uid=60001, tty=34818, term=True))  # an ssh login
    assert node.pids() == {"terminal-510": 510}
    assert node.kernel("terminal-510").notebook == "terminal"


def test_a_kernels_parent_is_a_server_whose_terminals_are_watched():
    kernel = Seen(pid=610, start=2, ppid=600, uid=60001, marker="k1")
    shell = Seen(pid=620, start=3, ppid=600, uid=60001, tty=34816, term=True)
    node = _node(Seen(pid=600, start=1, ppid=1, uid=60001), kernel, shell)
    assert node.pids() == {"k1": 610, "terminal-620": 620}


def test_a_kernel_without_the_marker_is_known_by_its_connection_file(tmp_path):
    from colab_guard.watch.kernels import _CONNECTION_FILE, _SERVER

    found = Seen(pid=1, start=1, ppid=0, uid=60001)
    argv = ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f",
            "/home/a/.local/share/jupyter/runtime/kernel-8c1e-44.json"]
    script = tmp_path / "argv.py"
    script.write_text("import time; time.sleep(30)")
    proc = subprocess.Popen([sys.executable, str(script), *argv[3:]])
    try:
        wait = __import__("tests.harness", fromlist=["wait_until"]).wait_until
        wait(lambda: "kernel-8c1e-44" in open(f"/proc/{proc.pid}/cmdline").read(), timeout=10)
        NodeKernels._read_command_line(proc.pid, found)
    finally:
        proc.kill()
        proc.wait()
    assert found.marker == "8c1e-44"
    assert _CONNECTION_FILE.search("kernel-../../x.json") is None  # no path in an id
    for line in ("/usr/local/bin/jupyter-lab --no-browser", "/usr/bin/python3 -m jupyter_server",
                 "/opt/conda/bin/python /opt/conda/bin/jupyterhub-singleuser --ip=0.0.0.0",
                 "jupyter lab"):
        assert _SERVER.search(line), line
    for line in ("python3 my_jupyter_serverless.py", "vim jupyter_server_config.py"):
        assert not _SERVER.search(line), line


# ---------------------------------------------------------------- telling users' servers


def test_the_catch_up_names_the_action_from_the_recorded_steps():
    from colab_guard.record.incident import Action, Incident
    from colab_guard.watch.tell import plan_action

    incident = Incident("k", "crypto-mining", "high", "s", "d", "alice", actions=[
        Action("record", "incident log", "done"), Action("warn", "user", "done"),
        Action("interrupt", "kernel", "done"), Action("stop", "pid 5", "done")])
    assert plan_action(incident) == "interrupt"
    assert plan_action(Incident("k", "tampering", "medium", "s", "d", "alice")) == "record"


def test_the_server_tells_each_watcher_incident_once_and_remembers_what_was_told(tmp_path):
    from colab_guard.record.incident import Incident
    from colab_guard.watcher_link import WatcherLink

    told = []
    seen_file = tmp_path / "told.json"
    link = WatcherLink("/nonexistent.sock", seen_file, lambda *args: told.append(args))
    old = Incident("k", "crypto-mining", "high", "s", "d", "alice", time=link._told_until - 60)
    new = Incident("k", "crypto-mining", "high", "s", "d", "alice", time=link._told_until + 1)
    link._received({"type": "welcome", "covered": True, "user": "alice", "uid": 60001})
    assert link.covered
    for incident in (old, new):  # the catch-up
        link._received({"type": "incident", "phase": "done", "action": "interrupt",
                        "incident": incident.to_dict(), "message": "m", "policy_url": ""})
    link._received({"type": "caught_up", "count": 2})
    link._received({"type": "incident", "phase": "acting", "action": "interrupt",
                    "incident": new.to_dict(), "message": "m", "policy_url": ""})  # again
    assert [(a[0].id, a[2], a[5]) for a in told] == [(old.id, "done", False),
                                                     (new.id, "done", True)]
    assert [i["id"] for i in link.status()["told_on_return"]] == [new.id]
    assert list(link.incidents) == [old.id, new.id]
    again = WatcherLink("/nonexistent.sock", seen_file, lambda *args: None)
    assert abs(again._told_until - new.time) < 0.001  # a later server does not tell it again


def test_a_watcher_incident_is_told_again_when_a_stronger_action_is_carried_out_in_it(tmp_path):
    """A kernel shut down for going on past its interrupt: the interrupt's incident is told
    again with the shutdown (one incident, kept once), and a late weaker phase is not."""
    from colab_guard.record.incident import Incident
    from colab_guard.watcher_link import WatcherLink

    told = []
    link = WatcherLink("/nonexistent.sock", tmp_path / "told.json", lambda *args: told.append(args))

    def tell(incident: Incident, phases: list[tuple[str, str]]) -> list[tuple]:
        del told[:]
        for phase, action in phases:
            link._received({"type": "incident", "phase": phase, "action": action,
                            "incident": incident.to_dict(), "message": "m", "policy_url": ""})
        return [(a[1], a[2], a[5]) for a in told]

    in_order = Incident("k", "remote-access", "high", "s", "d", "alice", time=link._told_until + 1)
    assert tell(in_order, [("acting", "interrupt"), ("done", "interrupt"), ("acting", "shutdown"),
                           ("done", "shutdown"), ("done", "shutdown")]) == [
        ("interrupt", "acting", True), ("interrupt", "done", True),
        ("shutdown", "acting", True), ("shutdown", "done", True)]
    # the interrupt's completion after the shutdown began: not told over it
    late = Incident("k", "remote-access", "high", "s", "d", "alice", time=link._told_until + 1)
    assert tell(late, [("acting", "interrupt"), ("acting", "shutdown"), ("done", "interrupt"),
                       ("done", "shutdown")]) == [
        ("interrupt", "acting", True), ("shutdown", "acting", True), ("shutdown", "done", True)]
    assert list(link.incidents) == [in_order.id, late.id]
    assert [action for _, action in link.incidents.values()] == ["shutdown", "shutdown"]


def test_settings_a_user_can_write_are_told_apart(tmp_path):
    import json

    from colab_guard.settings_origin import setting_sources, user_can_write

    operator, own = tmp_path / "etc", tmp_path / "home"
    operator.mkdir()
    own.mkdir()
    (operator / "jupyter_server_config.json").write_text(json.dumps(
        {"ColabGuard": {"policy_url": "https://x"}}))
    conf_d = own / "jupyter_server_config.d"
    conf_d.mkdir()
    (conf_d / "mine.json").write_text(json.dumps(
        {"ColabGuard": {"enabled": False},
         "ServerApp": {"jpserver_extensions": {"colab_guard": False}}}))
    (own / "jupyter_colab_guard_config.py").write_text("c.ColabGuard.dry_run = True\n")
    me = os.getuid()
    if me == 0:  # root is never "a user": the folders become a user's
        me = 60011
        for folder in (tmp_path, own, operator):
            os.chown(folder, me, me)

    def sources(uid):
        return {(s.setting, s.user_writable) for s in setting_sources(
            [str(own), str(operator)], {"ColabGuard": {"sample_interval": 2}}, uid=uid,
            groups=[])}

    # As the folders' owner: everything in them is theirs (the operator's folder too, here).
    assert sources(me) == {("ColabGuard.enabled", True), ("ColabGuard.dry_run", True),
                           ("ServerApp.jpserver_extensions.colab_guard", True),
                           ("ColabGuard.policy_url", True),
                           ("ColabGuard.sample_interval", False)}  # the command line
    assert all(not writable for _, writable in sources(0))  # root is the operator
    other = 60009 if me != 60009 else 60010
    operator.chmod(0o755)
    assert not user_can_write(operator / "jupyter_server_config.json", other, [])
    operator.chmod(0o757)
    assert user_can_write(operator / "jupyter_server_config.json", other, [])
    operator.chmod(0o1777)  # a sticky folder: others cannot replace the file
    assert not user_can_write(operator / "jupyter_server_config.json", other, [])


#: opens the process connector as the watcher does and says whether its events arrive
PROBE = """
import asyncio, concurrent.futures, logging, types
from colab_guard.watch.proc_events import ProcEvents

async def main():
    kernels = types.SimpleNamespace(events_live=False, events_lost=False, pids=dict, by_pid=dict,
                                    exec_seen=lambda pid: None, _is_user=lambda uid: False,
                                    forked=lambda pid: None, exited=lambda pid: None)
    monitor = types.SimpleNamespace(
        kernels=kernels, exec_argv={}, check_soon=lambda: None, attributed_at_pass={},
        exited=lambda pid: None,
        _sampling=concurrent.futures.ThreadPoolExecutor(1),
        sampler=types.SimpleNamespace(owner_of=lambda pid: None, claim=lambda *a: None),
        settings=types.SimpleNamespace(sample_interval=1.0))
    events = ProcEvents.start(asyncio.get_running_loop(), monitor, logging.getLogger())
    print("events" if events is not None and await events.probe(timeout=3) else "silent")

asyncio.run(main())
"""


def test_process_events_are_probed_and_a_silent_connector_is_not_trusted():
    """In a network namespace of its own (a pod without hostNetwork) the connector's socket
    opens but no event arrives: the probe says so, and the watcher scans /proc instead."""
    import shutil

    import pytest

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    here = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, timeout=60)
    assert here.stdout.strip() == "events", here.stderr
    apart = subprocess.run(["unshare", "--net", sys.executable, "-c", PROBE],
                           capture_output=True, text=True, env=env, timeout=60)
    if apart.returncode != 0 and "unshare" in apart.stderr:
        pytest.skip(f"no network namespace here: {apart.stderr.strip()}")
    assert apart.stdout.strip() == "silent", apart.stderr


# ---------------------------------------------------------------- the event-kept table


def _listing() -> tuple[set[int], set[int]]:
    """The live processes, and the zombies (discovery forgets a process at its exit: one
    listed as a zombie may be known or not)."""
    live, zombies = set(), set()
    for name in os.listdir("/proc"):
        try:
            if name.isdigit():
                state = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()[0]
                (zombies if state in ("Z", "X") else live).add(int(name))
        except (OSError, IndexError):
            continue
    return live, zombies


def _agrees(events, node: NodeKernels) -> bool:
    """Whether discovery's processes are /proc's: every process alive before and after the
    refresh is known, and nothing is known that was alive at neither (a busy machine: tried
    a few times)."""
    for _ in range(10):
        before, zombies = _listing()
        events._readable()  # the events read so far, as the loop would
        node.refresh()
        after, more_zombies = _listing()
        if before & after <= set(node._seen) <= before | after | zombies | more_zombies:
            return True
    return False


async def test_the_event_kept_process_table_agrees_with_proc_after_forks_exits_and_lost_events():
    """With process events live, discovery lists /proc only every RECONCILE s (or after lost
    events) and follows forks, execs and exits in between."""
    import asyncio
    import concurrent.futures
    import logging
    import types

    import pytest

    from colab_guard.watch import kernels as kernels_module

    if os.geteuid() != 0:
        pytest.skip("the process connector needs root")
    node = NodeKernels(min_uid=1000)
    monitor = types.SimpleNamespace(
        kernels=node, exec_argv={}, check_soon=lambda: None, attributed_at_pass={},
        exited=lambda pid: None, check_at_exec=lambda *a: None,
        _sampling=concurrent.futures.ThreadPoolExecutor(1),
        sampler=types.SimpleNamespace(claim=lambda *a: None),
        settings=types.SimpleNamespace(sample_interval=1.0))
    events = proc_events.ProcEvents.start(asyncio.get_running_loop(), monitor,
                                          logging.getLogger())
    assert events is not None and await events.probe(timeout=5)
    sleepers = []
    try:
        node.refresh()
        listed = node._listed_at
        sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(10)]
        for _ in range(10):
            subprocess.run(["true"])  # started and gone between two refreshes
        for proc in sleepers[:5]:
            proc.kill()
            proc.wait()
        assert _agrees(events, node)
        assert node._listed_at == listed  # followed from events, /proc not listed
        alive = {p.pid for p in sleepers[5:]}
        assert alive <= set(node._seen)
        assert not {p.pid for p in sleepers[:5]} & set(node._seen)
        # Events lost: read none of them (as when the socket's buffer overran) ...
        events.loop.remove_reader(events.sock.fileno())
        events.sock.close()
        lost = [subprocess.Popen(["sleep", "60"]) for _ in range(5)]
        sleepers += lost
        node.refresh()
        assert not {p.pid for p in lost} & set(node._seen)  # not known: nothing said so
        node.events_lost = True  # what ENOBUFS sets
        node.refresh()
        assert node._listed_at != listed and {p.pid for p in lost} <= set(node._seen)
        # ... and the reconciliation lists /proc all the same, every RECONCILE s
        listed = node._listed_at
        node._listed_at -= kernels_module.RECONCILE
        unseen = subprocess.Popen(["sleep", "60"])
        sleepers.append(unseen)
        node.refresh()
        assert node._listed_at > listed - kernels_module.RECONCILE and unseen.pid in node._seen
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()
        monitor._sampling.shutdown()


def test_the_passs_table_is_discoverys_users_processes_not_the_machines():
    """The node watcher's sampler takes its table from discovery (no second listing of
    /proc), and only the notebook users' processes: root's are not in it."""
    import pwd

    import pytest

    from colab_guard.watch.sampler import NodeSampler

    if os.geteuid() != 0:
        pytest.skip("starts a process as another user")
    nobody = pwd.getpwnam("nobody")
    node = NodeKernels(min_uid=1000)
    sampler = NodeSampler(node)
    proc = subprocess.Popen(["sleep", "60"], user=nobody.pw_uid, group=nobody.pw_gid,
                            extra_groups=[])
    try:
        from tests.harness import wait_until

        wait_until(lambda: open(f"/proc/{proc.pid}/comm").read().strip() == "sleep", timeout=10,
                   what="sleep exec'd")
        node.refresh()
        table = sampler._scan_table()
        assert proc.pid in table and os.getpid() not in table and 1 not in table
        entry = table[proc.pid]
        assert entry.pid == proc.pid and entry.ppid == os.getpid()
        assert abs(entry.key[1] - procfs.start_time(proc.pid)) < 0.01
        proc.kill()
        proc.wait()
        node.refresh()
        assert proc.pid not in sampler._scan_table()
    finally:
        proc.kill()
        proc.wait()


def test_a_listing_that_finds_nothing_new_keeps_the_table_and_holds_no_election(monkeypatch):
    """Without process events discovery lists /proc at every refresh (with them, every
    RECONCILE s): one that finds no process new, exec'd or gone keeps the same table (the
    pass does not make its own again: NodeSampler._scan_table) and elects no kernels again;
    a process started is read and brings an election."""
    from tests.harness import wait_until

    node = NodeKernels(min_uid=1000)
    node.refresh()
    elections = []
    elect = node._elect
    monkeypatch.setattr(node, "_elect", lambda: (elections.append(1), elect()))

    def unchanged() -> bool:
        table, held = node.processes(), len(elections)
        node.refresh()
        return node.processes() is table and len(elections) == held

    # (a process younger than 5 s is read again at each listing: it may still exec)
    wait_until(unchanged, timeout=60, interval=0.5, what="a listing with no process new or gone")
    child = subprocess.Popen(["sleep", "60"])
    try:
        table, held = node.processes(), len(elections)
        node.refresh()
        assert node.processes() is not table and child.pid in node.processes()
        assert len(elections) == held + 1
    finally:
        child.kill()
        child.wait()


def test_the_heartbeat_is_written_every_few_seconds_and_when_the_kernels_watched_change(
        tmp_path):
    import json
    import types

    from colab_guard.watch.app import HEARTBEAT_EVERY, NodeMonitor

    kernels = {"k1": 10}
    monitor = types.SimpleNamespace(
        heartbeat_file=tmp_path / "heartbeat.json", ticks=1, proc_events=True,
        settings=types.SimpleNamespace(sample_interval=1.0), kernel_pids=lambda: kernels,
        _beaten=NodeMonitor._beaten)

    def beat(now: float, ticks: int) -> dict:
        monitor.ticks = ticks
        NodeMonitor._beat(monitor, now)
        return json.loads(monitor.heartbeat_file.read_text())

    assert beat(1000.0, 1) == {"time": 1000.0, "pid": os.getpid(), "ticks": 1, "kernels": 1,
                               "proc_events": True, "sample_interval": 1.0}
    assert beat(1001.0, 2)["ticks"] == 1  # nothing new to say: not written again so soon
    kernels["k2"] = 11
    assert beat(1002.0, 3)["kernels"] == 2  # the kernels watched changed: written at once
    assert beat(1003.0, 4)["ticks"] == 3
    assert beat(1002.0 + HEARTBEAT_EVERY, 5)["ticks"] == 5
    assert monitor.heartbeat_file.stat().st_mode & 0o777 == 0o644
