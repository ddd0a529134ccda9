"""The behaviour module's parts on their own: tcp_info from real sockets, the kernel hook's
connect and bind reports as the server reads them, a kernel's own ports, the scan counts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import psutil

from colab_guard.channel import bound_by, connected_to
from colab_guard.kernel import hook
from colab_guard.observe.behaviour import Behaviour, _connection_ports
from colab_guard.observe import procfs
from colab_guard.observe.model import Process, Snapshot, Socket
from colab_guard.observe.procfs import InetTables
from colab_guard.observe.tcpinfo import Dumper


def _pair():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    return server, client, accepted


def test_tcp_info_counts_what_passed_each_way_by_dump_and_by_lookup():
    server, client, accepted = _pair()
    with server, client, accepted:
        client.sendall(b"x" * 100)
        accepted.recv(100)
        accepted.sendall(b"y" * 40)
        client.recv(40)
        inode = os.fstat(client.fileno()).st_ino
        pairs = [p for p in InetTables().pairs((inode,))]
        dumper = Dumper()
        try:
            by_lookup = dumper.lookup(pairs)[inode]
            by_dump = dumper.dump()[inode]
        finally:
            dumper.close()
    for info in (by_lookup, by_dump):
        assert info.state == 1
        assert info.received == 40
        assert info.sent >= 100  # acknowledged bytes (the SYN counts one)
        assert info.data_segments >= 2


def test_a_connection_held_by_an_ipv6_socket_is_found_under_its_mapped_address():
    server = socket.socket(socket.AF_INET6)
    server.bind(("::", 0))
    server.listen()
    with server, socket.create_connection(("127.0.0.1", server.getsockname()[1])) as client:
        accepted, _ = server.accept()
        with accepted:
            inode = os.fstat(accepted.fileno()).st_ino
            pairs = InetTables().pairs((inode,))
            assert pairs[0][1].local_ip == "127.0.0.1"  # normalised in the model
            assert inode in Dumper().lookup(pairs)


def test_the_kernel_hooks_connect_and_bind_reports_are_read_and_anything_else_skipped():
    events = [["connect", "('127.0.0.1', 8080)"], ["connect", "('::ffff:10.0.0.1', 22, 0, 0)"],
              ["connect", "/tmp/unix.sock"], ["connect", "('127.0.0.1', 99999)"],
              ["bind", "('0.0.0.0', 8022) asyncio asyncssh __main__"],
              ["bind", "('127.0.0.1', 0) asyncio pproxy"], ["bind", "garbage ) ;rm -rf"],
              ["import", "os"], "not a list", ["connect", 5]]
    assert connected_to(events) == [("127.0.0.1", 8080), ("10.0.0.1", 22)]
    assert bound_by(events) == [(8022, ["asyncio", "asyncssh", "__main__"]),
                                (0, ["asyncio", "pproxy"])]
    assert connected_to("nope") == [] and bound_by(None) == []


def test_the_hook_reports_the_modules_whose_code_binds():
    reporter = hook.Reporter()
    hook_fn = reporter.make_hook()
    with socket.socket() as sock:
        hook_fn("socket.bind", (sock, ("127.0.0.1", 0)))
    [(kind, detail)] = reporter.drain()
    assert kind == "bind"
    assert detail.startswith("('127.0.0.1', 0) ")
    assert detail.split()[2] == __name__.partition(".")[0]  # this test's code bound it


def test_a_kernels_own_ports_come_from_its_connection_file(tmp_path):
    connection = tmp_path / "kernel-1.json"
    connection.write_text(json.dumps({"shell_port": 5001, "iopub_port": 5002, "stdin_port": 5003,
                                      "control_port": 5004, "hb_port": 5005, "ip": "127.0.0.1"}))
    me = os.getpid()
    assert _connection_ports(me, ["python", "-m", "ipykernel_launcher", "-f", str(connection)]) \
        == (5001, 5002, 5003, 5004, 5005)
    assert _connection_ports(me, ["python", "-m", "ipykernel_launcher", f"-f={connection}"]) == \
        (5001, 5002, 5003, 5004, 5005)
    assert _connection_ports(me, ["python", "-f", str(tmp_path / "missing.json")]) == ()
    assert _connection_ports(me, ["python"]) == ()


def test_a_relative_connection_file_is_read_from_the_kernels_directory(tmp_path):
    (tmp_path / "kernel-2.json").write_text(json.dumps({"shell_port": 6001, "hb_port": 6002}))
    kernel = subprocess.Popen(["sleep", "60"], cwd=tmp_path)
    try:
        assert _connection_ports(kernel.pid, ["python", "-f", "kernel-2.json"]) == (6001, 6002)
    finally:
        kernel.kill()
        kernel.wait()


def test_a_connection_file_that_is_a_fifo_is_not_opened(tmp_path):
    # The path is the user's to choose (a kernel may rewrite its command line): a FIFO there
    # would block the sampler's thread until someone writes to it.
    fifo = tmp_path / "kernel-3.json"
    os.mkfifo(fifo)
    done = []
    reader = threading.Thread(target=lambda: done.append(
        _connection_ports(os.getpid(), ["python", "-f", str(fifo)])), daemon=True)
    reader.start()
    reader.join(10)
    if not done:
        with open(fifo, "w"):  # let the thread go
            pass
    assert done == [()]


def _kernel(pid: int = 10, sockets=()) -> Process:
    return Process(pid=pid, name="python3", is_kernel=True, create_time=1.0, uid=1000,
                   sockets=list(sockets))


def test_refused_connections_the_hook_reports_count_as_ports_tried_within_the_window():
    behaviour = Behaviour(dumper=lambda pid: Dumper())
    kernel = _kernel()
    snapshots = {"k": Snapshot("k", 100.0, [kernel])}
    behaviour.note_connects("k", [("127.0.0.1", port) for port in range(1, 121)], 100.0)
    changed = behaviour.annotate(snapshots, lambda p: [], 100.0)
    assert changed[kernel.key].kernel_ports_tried == 120
    # eleven seconds later, nothing new: the window forgot them
    snapshots = {"k": Snapshot("k", 111.0, [changed[kernel.key]])}
    changed = behaviour.annotate(snapshots, lambda p: [], 111.0)
    assert changed[kernel.key].kernel_ports_tried == 0


def test_ports_the_users_own_kernels_serve_are_not_counted_as_tried():
    behaviour = Behaviour(dumper=lambda pid: Dumper())
    server = Process(pid=11, name="python3", create_time=1.0, uid=1000, sockets=[
        Socket("tcp", "127.0.0.1", port, status="LISTEN") for port in range(1, 121)])
    kernel = _kernel()
    snapshots = {"k": Snapshot("k", 100.0, [kernel, server])}
    behaviour.note_connects("k", [("127.0.0.1", port) for port in range(1, 121)], 100.0)
    changed = behaviour.annotate(snapshots, lambda p: [], 100.0)
    assert kernel.key not in changed or changed[kernel.key].kernel_ports_tried == 0


def test_a_kernel_handed_out_as_it_was_gets_what_the_hook_reported_since():
    # The same sample again (an idle kernel) keeps its fields without their being worked out
    # again; imports the hook reports meanwhile are given all the same.
    behaviour = Behaviour(dumper=lambda pid: Dumper())
    kernel = _kernel()
    behaviour.note_imports("k", ["numpy.linalg"])
    kernel = behaviour.annotate({"k": Snapshot("k", 100.0, [kernel])}, lambda p: [], 100.0)[
        kernel.key]
    assert kernel.imports == ("numpy",)
    assert behaviour.annotate({"k": Snapshot("k", 101.0, [kernel])}, lambda p: [], 101.0) == {}
    behaviour.note_imports("k", ["libtorrent"])
    changed = behaviour.annotate({"k": Snapshot("k", 102.0, [kernel])}, lambda p: [], 102.0)
    assert changed[kernel.key].imports == ("libtorrent", "numpy")


def test_a_kernels_connection_file_is_read_again_when_its_command_line_changes(tmp_path):
    # First seen between its fork and its exec, a kernel carries its parent's command line;
    # while the command line is the same, the file is not read at every tick.
    connection = tmp_path / "kernel-9.json"
    behaviour = Behaviour(dumper=lambda pid: Dumper())
    forked = Process(pid=os.getpid(), name="python3", is_kernel=True, create_time=1.0,
                     uid=1000, cmdline=["jupyter-lab"])
    kernel = behaviour.annotate({"k": Snapshot("k", 100.0, [forked])}, lambda p: [], 100.0).get(
        forked.key, forked)
    assert kernel.own_ports == ()
    connection.write_text(json.dumps({"shell_port": 7001, "hb_port": 7002}))
    execd = replace(kernel, cmdline=["python", "-m", "ipykernel_launcher", "-f", str(connection)])
    changed = behaviour.annotate({"k": Snapshot("k", 101.0, [execd])}, lambda p: [], 101.0)
    assert changed[execd.key].own_ports == (7001, 7002)


# ---------------------------------------------------------------- a pool's connection, by traffic


def _pushed_after(ticks: list[tuple[int, int, int, int]]) -> int:
    """``pushed_connections`` of one connection after the given ticks, a second apart, each
    (bytes sent, bytes received, ms since last sent, ms since last received) so far."""
    from colab_guard.observe.behaviour import WINDOW
    from colab_guard.observe.tcpinfo import TcpInfo

    behaviour = Behaviour(window=WINDOW)
    conn = [(7, Socket("tcp", "127.0.0.1", 40000, "127.0.0.1", 3333, "ESTABLISHED"))]
    count, segments = 0, 0
    for second, (sent, received, since_sent, since_received) in enumerate(ticks):
        segments += 1
        info = {7: TcpInfo(1, sent, received, segments, since_sent, since_received)}
        count = behaviour._pushed(conn, info, float(second), unknown=False)
    return count


def _conversation(seconds: int, push_every: int, push_bytes: int, reply_every: int,
                  reply_bytes: int) -> list[tuple[int, int, int, int]]:
    """A connection's counters, tick by tick: a login (a request and its answer), then the
    peer pushing ``push_bytes`` every ``push_every`` s and the process sending
    ``reply_bytes`` every ``reply_every`` s (0: never), each answered at once with 20 bytes."""
    sent, received, last_sent, last_received, ticks = 150, 300, 0, 0, []
    for second in range(1, seconds + 1):
        if push_every and second % push_every == 0:
            received, last_received = received + push_bytes, second
        if reply_every and second % reply_every == 1:
            sent, last_sent = sent + reply_bytes, second
            received, last_received = received + 20, second
        ticks.append((sent, received, (second - last_sent) * 1000 + 300,
                      (second - last_received) * 1000 + 300))
    return ticks


def test_a_pool_pushing_jobs_to_a_miner_submitting_shares_is_a_pushed_connection():
    assert _pushed_after(_conversation(20, 2, 250, 3, 120)) == 1
    # a real pool's pace: a job every 30 s, a share every 10 s; counted once two jobs came
    assert _pushed_after(_conversation(59, 30, 600, 10, 150)) == 0
    assert _pushed_after(_conversation(61, 30, 600, 10, 150)) == 1


def test_a_subscriber_that_only_listens_is_no_pool_connection():
    """A shared broker's channel (a job announcement every 2 s, every 20 s) pushed to a
    busy subscriber that sends nothing back, however long it runs."""
    assert _pushed_after(_conversation(60, 2, 120, 0, 0)) == 0
    assert _pushed_after(_conversation(120, 20, 120, 0, 0)) == 0
    # keepalives (Redis' PING, MQTT's PINGREQ) are not shares
    assert _pushed_after(_conversation(60, 2, 120, 5, 14)) == 0


def test_a_parameter_server_pushing_weights_is_no_pool_connection():
    """Weights pushed unasked (64 KiB each), gradients sent back: no job is that big."""
    assert _pushed_after(_conversation(60, 5, 64 * 1024, 5, 64 * 1024)) == 0


def _conversations_after(ticks: list[tuple[int, int, int, int]], inode_at,
                         pid: int = 4_194_305, at_gap=lambda: None) -> int:
    """``pushed_connections`` after the given ticks (as ``_pushed_after``), the connection's
    inode at each second given by ``inode_at(second)`` (a new inode: a new connection, its
    counters from 0; None: no connection at that tick, when ``at_gap()`` is called first) of
    process ``pid`` (by default none: it holds no socket)."""
    from colab_guard.observe.behaviour import WINDOW
    from colab_guard.observe.tcpinfo import TcpInfo

    behaviour = Behaviour(window=WINDOW)
    miner = Process(pid=pid, name="python3", create_time=1.0, uid=1000)
    key = miner.key
    behaviour._unlisted[key] = behaviour._unlisted_sockets(miner)  # as when it became one
    count, base, current = 0, (0, 0, 0), None
    for second, (sent, received, since_sent, since_received) in enumerate(ticks):
        inode = inode_at(second)
        if inode != current:
            base, current = (sent, received, second), inode
        behaviour._retire({inode} if inode else set(), {key})
        if inode is None:
            at_gap()
        conn = [(inode, Socket("tcp", "127.0.0.1", 40000 + inode, "127.0.0.1", 3333,
                               "ESTABLISHED"))] if inode else []
        if conn:
            info = {inode: TcpInfo(1, sent - base[0], received - base[1], second - base[2],
                                   since_sent, since_received)}
            count = behaviour._pushed(conn, info, float(second), unknown=False, key=key)
        behaviour._forget({key} if conn else set(), {key: conn}, {key: miner}, set(),
                          float(second))
    return count


def test_a_pool_connection_recycled_every_9_s_carries_its_conversation_on():
    talk = _conversation(40, 2, 250, 3, 120)
    assert _conversations_after(talk, lambda second: 100 + second // 9) == 1


def test_a_conversation_is_not_carried_over_a_gap_without_a_connection():
    """5 s without a connection between two (and no socket held that the sample misses):
    each connection starts a conversation of its own, none lives through the window."""
    talk = _conversation(40, 2, 250, 3, 120)
    assert _conversations_after(talk, lambda s: None if s % 14 >= 9 else 100 + s // 14) == 0


def test_a_conversation_is_carried_over_a_gap_while_the_process_holds_a_socket_unseen():
    """The same 5 s gap, while the process (this one) holds a socket its sample does not list
    (the sampler sees a swapped socket late): the conversation waits for it."""
    held = []
    try:
        count = _conversations_after(
            _conversation(40, 2, 250, 3, 120),
            lambda s: None if s % 14 >= 9 else 100 + s // 14, pid=os.getpid(),
            at_gap=lambda: held.append(socket.socket()))
    finally:
        for sock in held:
            sock.close()
    assert count == 1


def _handed_down(holders_now: list[Process], inode: int = 7, earlier=(20, 5.0),
                 a_tick_between: bool = False, others: tuple[Process, ...] = ()) -> Behaviour:
    """Behaviour after the connection (``inode``) measured for ``earlier`` (2.5 s of CPU
    demand so far) is held by ``holders_now`` (``others`` sampled too), ``earlier`` gone, a
    tick with no holder between or not."""
    from colab_guard.observe.behaviour import _Demand, _Traffic

    behaviour = Behaviour(dumper=lambda pid: Dumper())
    behaviour._traffic = {inode: _Traffic(0.0, 1.0, earlier, "127.0.0.1")}
    behaviour._demand = {earlier: _Demand({}, total=2.5)}
    if a_tick_between:
        behaviour._retire(set(), set())  # no one held it at that tick
    sock = Socket("tcp", "127.0.0.1", 40000, "127.0.0.1", 3333, "ESTABLISHED")
    behaviour._hand_over({p.key: [(inode, sock)] for p in holders_now},
                         {p.key: p for p in [*holders_now, *others]})
    return behaviour


def _process(pid: int, started: float, ppid: int = 1) -> Process:
    return Process(pid=pid, name="python3", create_time=started, uid=1000, ppid=ppid)


def test_a_measured_connection_handed_down_takes_its_holders_demand_on():
    """A miner forking a child that carries the pool connection on, and exiting: the child is
    measured on from where the parent was, whether it is seen at the next tick or later."""
    child = _process(4_194_301, 6.0)
    for between in (False, True):
        behaviour = _handed_down([child], a_tick_between=between)
        assert behaviour._traffic[7].key == child.key
        assert list(behaviour._demand) == [child.key]
        assert behaviour._demand[child.key].total == 2.5


def test_a_connection_an_older_process_keeps_is_not_handed_down():
    """A parent keeping its connection while the workers it forks inherit it (and one is
    recycled), or the measured holder keeping it beside its child: no demand is carried;
    nor where the parent's sample does not list the socket yet (its fds are read)."""
    parent, child = _process(4_194_300, 1.0), _process(4_194_301, 6.0, ppid=4_194_300)
    assert child.key not in _handed_down([parent, child])._demand
    assert child.key not in _handed_down([_process(20, 5.0), child])._demand
    with socket.socket() as closed:
        let_go = os.fstat(closed.fileno()).st_ino
    me, worker = _process(os.getpid(), 1.0), _process(4_194_301, 6.0, ppid=os.getpid())
    with socket.socket() as held:  # this process's, as the unlisted parent's
        inode = os.fstat(held.fileno()).st_ino
        assert worker.key not in _handed_down([worker], inode, others=(me,))._demand
    assert worker.key in _handed_down([worker], let_go, others=(me,))._demand


def test_the_lowest_demand_is_over_slices_between_ticks():
    from collections import deque

    from colab_guard.observe.behaviour import _lowest_slice

    steady = deque((t, 0.2 * t) for t in range(16))  # a fifth of a core, every second
    assert round(_lowest_slice(steady, 1.0)) == 20
    bursts = deque((t, 0.4 * ((t + 1) // 2)) for t in range(16))  # 0.4 s every 2 s
    assert _lowest_slice(bursts, 1.0) == 0
    late = deque([(0, 0), (0.5, 0.1), (2.5, 0.5), (3.5, 0.7)])  # a late tick: one longer slice
    assert round(_lowest_slice(late, 1.0)) == 20


def test_peers_a_listening_process_connects_to_count_only_when_the_user_does_not_serve_them():
    """Six nodes of a lab (ports 6900-6905), each connected to the five others: no foreign
    peer; a node also connected to five outside endpoints has five."""
    behaviour = Behaviour(dumper=lambda pid: Dumper())
    sockets = {}
    nodes = []
    for i in range(6):
        port = 6900 + i
        listening = Socket("tcp", "0.0.0.0", port, status="LISTEN")
        out = [Socket("tcp", "127.0.0.1", 50000 + 10 * i + j, "127.0.0.1", 6900 + j, "ESTABLISHED")
               for j in range(6) if j != i]
        if i == 0:
            out += [Socket("tcp", "10.0.0.2", 51000 + j, f"10.0.1.{j}", 6881, "ESTABLISHED")
                    for j in range(5)]
        node = Process(pid=20 + i, name="python3", create_time=1.0, uid=1000,
                       sockets=[listening, *out])
        sockets[node.pid] = [(1000 * node.pid + n, s) for n, s in enumerate(node.sockets)]
        nodes.append(node)
    snapshots = {"k": Snapshot("k", 100.0, [_kernel(), *nodes])}
    changed = behaviour.annotate(snapshots, lambda p: sockets.get(p.pid, []), 100.0)
    assert changed[nodes[0].key].foreign_peers == 5
    assert all(n.key not in changed or changed[n.key].foreign_peers == 0 for n in nodes[1:])


def test_a_relayed_connection_mirrors_the_same_outbound_one_at_two_ticks():
    """Counters compared at one tick match by chance on a web app serving many clients (a
    response half sent, another request's database reply half read): an inbound connection
    counts as relayed once it mirrored the same outbound one at two ticks."""
    from colab_guard.observe.behaviour import RELAY_SIGHTINGS
    from colab_guard.observe.tcpinfo import TcpInfo
    behaviour = Behaviour(dumper=lambda pid: Dumper())
    client, server = (1, 1.0), (1, 1.0)
    relays = {"k": ([(client, 10, None)], [(server, 20, None), (server, 21, None)])}
    by_key = {client: object()}

    def counters(sent, received):
        return TcpInfo(1, sent, received, 10, 0, 0)

    def tick(inbound, outbound20, outbound21, now):
        info = {10: inbound, 20: outbound20, 21: outbound21}
        return behaviour._relay_counts(relays, info, by_key, now).get(client, 0)

    # A chance match with 20, then with 21: no relay.
    assert tick(counters(170_000, 60), counters(19, 165_000), counters(19, 40_000), 1.0) == 0
    assert tick(counters(250_000, 60), counters(19, 160_000), counters(19, 240_000), 2.0) == 0
    # The same pair at two ticks: relayed.
    assert RELAY_SIGHTINGS == 2
    assert tick(counters(300_000, 60), counters(19, 100_000), counters(19, 290_000), 3.0) == 1


def test_a_connection_holders_family_is_its_descendants_that_hold_no_connection_out():
    """A master (holding a connection out) with two workers, one of which starts a helper, and
    a third child that holds a connection of its own (with a worker of its own): the first
    three are the master's family; the third child and its worker are the third's."""
    from colab_guard.observe.behaviour import _families

    def proc(pid, ppid):
        return Process(pid=pid, ppid=ppid, name="python3", create_time=1.0, uid=1000)

    master, worker, other, helper, own, owns_worker = (
        proc(10, 1), proc(11, 10), proc(12, 10), proc(13, 11), proc(14, 10), proc(15, 14))
    outbound = {master.key: ["a connection"], own.key: ["another"]}
    snapshots = {"k": Snapshot("k", 1.0, [master, worker, other, helper, own, owns_worker])}
    families = _families(snapshots, outbound)
    assert {p.pid for p in families[master.key]} == {11, 12, 13}
    assert [p.pid for p in families[own.key]] == [15]
    assert _families({"k": Snapshot("k", 1.0, [master, worker])}, {}) == {}


def _spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _as_process(popen: subprocess.Popen, ppid: int = 1) -> Process:
    stat = procfs.read_stat(popen.pid)
    return Process(pid=popen.pid, ppid=ppid, name="python3", uid=os.getuid(), cpu_percent=100.0,
                   create_time=procfs.create_time(stat.start, psutil.boot_time()))


def test_a_holders_demand_counts_its_workers_from_when_they_joined_its_family():
    """A holder that sleeps, with a worker that spins: the worker's demand is the holder's
    from the first read on; a worker that had run a while before it was first seen in the
    family counts from then, not for its whole life."""
    holder_popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker_popen = _spinner()
    try:
        holder, worker = _as_process(holder_popen), _as_process(worker_popen, holder_popen.pid)
        behaviour = Behaviour(dumper=lambda pid: Dumper(), window=1.0)
        start = time.time()
        assert behaviour._cpu_demand(holder, [worker], start) == (0.0, 0.0)
        time.sleep(1.2)
        demand, _ = behaviour._cpu_demand(holder, [worker], time.time())
        assert demand >= 50, demand  # the worker's (waiting to run counts too)

        # a worker left out of one read (idle, so not in the sample): its next read counts
        # what it did since the read before
        again = Behaviour(dumper=lambda pid: Dumper(), window=1.0)
        again._cpu_demand(holder, [worker], time.time())
        time.sleep(0.6)
        again._cpu_demand(holder, [], time.time())
        time.sleep(0.6)
        demand, _ = again._cpu_demand(holder, [worker], time.time())
        assert demand >= 50, demand

        late = Behaviour(dumper=lambda pid: Dumper(), window=1.0)
        late._cpu_demand(holder, [], time.time())  # the worker is 1.2 s old: older than a tick
        time.sleep(1.2)
        demand, _ = late._cpu_demand(holder, [worker], time.time())
        assert demand < 20, demand  # joined now: its seconds of spinning before are not counted
    finally:
        for popen in (holder_popen, worker_popen):
            popen.kill()
            popen.wait()
