"""Red team against what landed on the morning of issues #14 and #17: the cell check's shell
reading (brace expansion, its cost on hostile text), the script reader's .pth files, and the
node watcher's parked kernels. What the guard gets right passes; what it missed and was fixed
passes too (its docstring says what was missed); what is still missed is
``xfail(strict=True)`` asserting what should happen. Real files, processes and kernels."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from colab_guard.detect.commands import split_shell
from tests.test_cell_commands import check
from tests.test_sampler_spread import SpreadingSampler, many, tell  # noqa: F401 (a fixture)
from tests.harness import wait_until
from tests.test_redteam_scripts import BASE_PYTHON, SLEEP, TOOL, _process_markers, _user_site

PYTHON313 = "/root/.pyenv/versions/3.13.0/bin/python3.13"


def programs(text: str) -> list[str]:
    return [c.argv[0] for c in split_shell(text)]


# ---------------------------------------------------------------- cell check: brace expansion

@pytest.mark.parametrize("cell", [
    "!./xm{r,}{i,}g -o pool:3333",        # two groups side by side: ./xmrig ./xmrg ./xmig ./xmg
    "!./{x{m,}rig,} -o pool:3333",        # nested: ./xmrig ./xrig ./
    "!./xm{r..q}ig -o pool:3333",         # a sequence: ./xmrig ./xmqig
    "!\"./xm\"{r,}ig -o pool:3333",       # a quoted head: bash expands the braces after it
], ids=["adjacent groups", "nested groups", "sequence", "quoted head"])
def test_a_miner_spelled_with_braces_bash_expands_is_refused(cell):
    """Was missed: only one level, one group per word, commas only (``./xm{r,}{i,}g`` read as
    the program ``./xmr``). Fixed: bash's brace expansion (adjacent, nested, sequences, quoted
    parts), 64 words a word."""
    found = check(cell)
    assert found and {d.signature.action or "category" for d in found} - {"warn", "record"}, \
        [d.signature.id for d in found]


@pytest.mark.parametrize("text, expected", [
    ("mkdir -p data/{train,test}/{cats,dogs}",
     [["mkdir", "-p", "data/train/cats", "data/train/dogs", "data/test/cats", "data/test/dogs"]]),
    ("cp file{,.bak}", [["cp", "file", "file.bak"]]),
    ("touch part{01..03}.csv", [["touch", "part01.csv", "part02.csv", "part03.csv"]]),
    ("echo {{a,b}}", [["echo", "{a}", "{b}"]]),
    ("find . -name '*.py' -exec wc -l {} +", [["find", ".", "-name", "*.py", "-exec", "wc", "-l", "{}", "+"],
                                              ["wc", "-l"]]),
    ("awk '{print $1,$2}' f", [["awk", "{print $1,$2}", "f"]]),
    ('echo ${V:-a,b} {x}', [["echo", "a,b", "{x}"]]),  # a parameter's default, unsplit
])
def test_honest_braces_expand_as_bash_does(text, expected):
    """Near-misses: honest brace expansions read as bash reads them, braces that expand
    nothing (``{}``, a parameter, quoted awk) left as they are."""
    assert [c.argv for c in split_shell(text)] == expected


def test_honest_brace_cells_are_not_touched():
    for cell in ("!mkdir -p data/{train,val,test}/{images,labels}", "!cp config.yaml{,.orig}",
                 "!for i in {1..5}; do python train.py --seed $i; done",
                 "!unzip -q data.zip -d /content/{raw,processed}"):
        assert [d.signature.id for d in check(cell)] == [], cell


@pytest.mark.parametrize("text", [
    "{a,b}" * 3000,                                   # 2^3000 words
    "x" * 8000 + "{a,b}" + "y" * 8000,                # long words
    "{" * 8000 + "}" * 8000,                          # deep nesting, nothing to expand
    "{a," * 4000,                                     # unclosed
    ("{a,b}" * 6 + " ") * 500,                        # many words of 64
    "{" + "{a,b}," * 3000 + "}",                      # thousands of alternatives
    ("{1..99999} ") * 100,                            # long sequences
    "\"{a,b}\"" * 2000, "'" * 3 + "{a,b} " * 2000,    # quoted, an unclosed quote
], ids=["product", "long", "nesting", "unclosed", "words", "alternatives", "sequences",
        "quoted", "unclosed quote"])
def test_hostile_brace_expansions_are_read_in_bounded_time(text):
    started = time.thread_time()  # CPU spent, whatever else the machine runs
    found = split_shell(text)
    assert time.thread_time() - started < 2.0  # about 0.2 s at most here
    assert len(found) <= 200 and sum(len(" ".join(c.argv)) for c in found) < 200_000


# A shell variable doubled at each step (2^59 characters), a replacement that doubles it, run in
# a child process with its memory limited (a regression raises MemoryError there, no more).
DOUBLING = {
    "variables": "; ".join(f"A{i}=$A{i - 1}$A{i - 1}" for i in range(1, 60)) + "; ./$A59",
    "replacements": "A=aaaaaaaa; " + "; ".join(["A=${A//a/aa}"] * 60) + "; ./$A",
    "words": "A=" + "x" * 16000 + "; ./$A" + " $A" * 2000,
}


@pytest.mark.parametrize("text", DOUBLING.values(), ids=DOUBLING.keys())
def test_doubling_shell_variables_are_read_in_bounded_time_and_memory(text):
    """Was missed: ``B=$A$A; C=$B$B; …`` in a ``!`` line grew each value twofold: 59 steps
    took the machine's memory (the cell check was killed). Fixed: an expansion is cut at
    MAX_TEXT (16 KiB) as it is built."""
    code = ("import resource, sys, time\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from colab_guard.detect.commands import split_shell\n"
            "started = time.perf_counter()\n"
            "found = split_shell(sys.argv[1])\n"
            "print(time.perf_counter() - started, sum(len(' '.join(c.argv)) for c in found))\n")
    done = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, size = done.stdout.split()
    assert float(seconds) < 2.0 and int(size) < 2_000_000


def test_an_honest_variable_chain_expands_as_bash_does():
    assert [c.argv for c in split_shell("D=data; OUT=$D/out; mkdir -p $OUT/{a,b} ${OUT}_bak")] == \
        [["mkdir", "-p", "data/out/a", "data/out/b", "data/out_bak"]]


# ---------------------------------------------------------------- cell check: pickles

PAYLOAD = b"cos\nsystem\n(S'ngrok tcp 22'\ntR."  # os.system('ngrok tcp 22') as it loads


def _refused(cell: str) -> bool:
    found = check(cell)
    return bool({d.signature.action or "category" for d in found} - {"warn", "record"})


@pytest.mark.parametrize("pad", [0, 2100, 100_000], ids=["bare", "past 4 KiB", "200 KB"])
def test_a_pickle_padded_with_inert_ops_is_read_to_its_end(pad):
    """Was missed: a constant pickle was read for its first 4,096 bytes (MAX_VALUE), so
    2,100 ``N0`` pairs (None, popped) before its GLOBAL hid it. Fixed: read to its end (a
    cell is 256 KiB at most, an op a byte at least: 0.3 s for the largest)."""
    started = time.thread_time()  # CPU spent reading, whatever else the machine runs
    assert _refused("import pickle\npickle.loads(%r)" % (b"N0" * pad + PAYLOAD))
    assert time.thread_time() - started < 5.0


def test_an_honest_pickle_constant_is_not_touched():
    import pickle
    data = pickle.dumps({"weights": [0.5] * 3000, "labels": ["cat", "dog"], "shape": (3, 224)})
    assert not check("import pickle\nstate = pickle.loads(%r)" % data)


def test_a_pickle_assembled_past_the_folding_limit_is_read():
    """Was missed: a value the cell assembles (``b'N0' * 3000 + payload``) longer than
    MAX_VALUE (4,096) was not folded at all, so the pickle was unknown. Fixed: an unpickler's
    argument is folded up to MAX_PICKLE_FOLDING (256 KiB for the whole cell)."""
    assert _refused("import pickle\npickle.loads(b'N0' * 3000 + %r)" % PAYLOAD)


def test_many_long_assembled_pickles_are_read_in_bounded_time():
    """The long folding is one budget per cell: thousands of calls assembling 200 KB each
    cost about what one does (the last ones are left unread, as any unknown value)."""
    cell = "import pickle\n" + "pickle.loads(b'N0' * 100000 + b'N.')\n" * 5000
    started = time.thread_time()  # CPU spent reading, whatever else the machine runs
    assert not check(cell)
    assert time.thread_time() - started < 10.0


def test_an_honest_assembled_pickle_is_not_touched():
    import pickle
    data = pickle.dumps({"rows": list(range(2000)), "note": "xmrig ngrok tcp 22"})
    assert not check("import pickle\nstate = pickle.loads(%r + %r)" % (data[:3000], data[3000:]))


# ---------------------------------------------------------------- script reader: .pth files

def _site_env(home) -> dict:
    env = dict(os.environ, HOME=str(home))
    env.pop("PYTHONNOUSERSITE", None)
    return env


#: The module a .pth imports: says it ran and exits at once when asked (the premise), else the tool.
PREMISE = "import os\nif os.environ.get('PREMISE'):\n    print('RAN', flush=True)\n    os._exit(0)\n"


def _runs_it(python: str, env: dict) -> bool:
    return subprocess.run([python, "-c", "pass"], env=dict(env, PREMISE="1"), capture_output=True,
                          text=True, timeout=60).stdout.strip() == "RAN"


def test_a_hidden_pth_file_is_read_where_python_runs_it(tmp_path):
    """Was missed: a .pth whose name begins with a dot was skipped, as Python 3.13 skips it;
    Python up to 3.12 (this venv's 3.11 among them) runs its import lines at every start.
    Fixed: read whatever the version (a hidden .pth a 3.13 skips is read for nothing)."""
    site_dir = _user_site(tmp_path)
    (site_dir / ".zz-tool.pth").write_text("import core\n")
    (site_dir / "core.py").write_text(PREMISE + TOOL)
    env = _site_env(tmp_path)
    assert _runs_it(BASE_PYTHON, env)  # the premise: this Python ran the hidden .pth's import line
    assert _process_markers([BASE_PYTHON, *SLEEP], env=env) == ["pproxy"]


@pytest.mark.skipif(not os.path.exists(PYTHON313), reason="needs a Python 3.13")
@pytest.mark.parametrize("content", [b"\xef\xbb\xbfimport core\n", b"# notes\x0cimport core\n",
                                     b"# notes\x1cimport core\n"],
                         ids=["BOM", "form feed", "file separator"])
def test_a_pth_line_python_313_splits_differently_is_read(tmp_path, content):
    """Was missed: Python 3.13 decodes a .pth as utf-8-sig and splits it with str.splitlines
    (a BOM before ``import``, a form feed or \\x1c ending a comment line start an import line
    it runs); the reader split bytes at \\n and \\r only. Fixed: both readings' lines."""
    site_dir = _user_site(tmp_path, "3.13")
    (site_dir / "zz-tool.pth").write_bytes(content)
    (site_dir / "core.py").write_text(PREMISE + TOOL)
    env = _site_env(tmp_path)
    assert _runs_it(PYTHON313, env)  # the premise: Python 3.13 ran it
    assert _process_markers([PYTHON313, *SLEEP], env=env) == ["pproxy"]


@pytest.mark.parametrize("padding", [b"#\n" * (1 << 20), b"./not-there\n" * 100_000],
                         ids=["comments", "folder lines"])
def test_a_pth_import_line_after_a_mebibyte_of_padding_is_read(tmp_path, padding):
    """Was missed: a .pth was read for its first max_script_bytes (1 MiB) only; site.py reads
    it whole, so an import line after a mebibyte of comments or folder lines ran unread.
    Fixed: past the budget, its lines that hold "import" are read up to max_bytes."""
    site_dir = _user_site(tmp_path)
    (site_dir / "zz-tool.pth").write_bytes(padding + b"import core\n")
    (site_dir / "core.py").write_text(PREMISE + TOOL)
    env = _site_env(tmp_path)
    assert _runs_it(BASE_PYTHON, env)  # the premise: site.py ran the line after the padding
    assert _process_markers([BASE_PYTHON, *SLEEP], env=env) == ["pproxy"]


def test_an_honest_pth_of_a_scientific_package_carries_nothing(tmp_path):
    """Near-miss: the .pth files scientific packages install (a path line, an import line of
    their own hook, a BOM from an editor) are read and carry no marker."""
    site_dir = _user_site(tmp_path)
    (site_dir / "distutils-precedence.pth").write_text(
        "import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, 'local') == "
        "'local'; enabled and __import__('_distutils_hack').add_shim(); \n")
    (site_dir / "_distutils_hack.py").write_text("def add_shim():\n    pass\n")
    (site_dir / "matplotlib-nspkg.pth").write_bytes(b"\xef\xbb\xbf./mpl_toolkits\n")
    (site_dir / ".hidden-notes.pth").write_text("# see pproxy and stratum+tcp notes\n")
    assert _process_markers([BASE_PYTHON, *SLEEP], env=_site_env(tmp_path)) == []


# ---------------------------------------------------------------- node watcher: parked kernels

# A kernel stand-in that barely runs (a poller waking ten times a second) with a few sleeping
# children (so that, thresholds lowered, its processes are "many"), a file open; told
# ``swap PORT`` it connects with libc through ctypes (no audit event, so no hook report) and
# puts the socket in the file's place (dup2): the same number of fds.
SWAPPER = """\
import ctypes, os, select, socket, struct, subprocess, sys
children = [subprocess.Popen(['sleep', '600']) for _ in range(6)]
held = open('/etc/hostname')
ports = socket.create_server(('127.0.0.1', 0))  # a kernel's own listening port (ZMQ's)
print(' '.join(str(c.pid) for c in children), flush=True)
libc = ctypes.CDLL(None, use_errno=True)
while True:
    if not select.select([sys.stdin], [], [], 0.1)[0]:
        continue
    command = sys.stdin.readline().split()
    if not command:
        break
    fd = libc.socket(2, 1, 0)
    address = struct.pack('=H', 2) + struct.pack('!H', int(command[1])) + bytes([127, 0, 0, 1]) + bytes(8)
    assert libc.connect(fd, address, 16) == 0, ctypes.get_errno()
    assert libc.dup2(fd, held.fileno()) == held.fileno()
    libc.close(fd)
    print('swapped', flush=True)
for child in children:
    child.kill()
"""


@pytest.fixture
def swapper():
    proc = subprocess.Popen([sys.executable, "-c", SWAPPER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    children = [int(pid) for pid in proc.stdout.readline().split()]
    yield proc, children
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(30)
    yield server
    server.close()


def test_a_socket_a_barely_running_kernel_swaps_into_a_files_place_is_seen(
        many, swapper, listener, monkeypatch):
    """Was missed: a kernel that barely runs is handed out as it was, then read lightly (its
    fd count); a connection made with libc (no hook report) and dup2'd over an open file
    keeps the count, became "foreign" (unheld at two tick ends) and stayed unseen until the
    kernel's next full read (up to KERNEL_FULL_READ_MAX, 40 s). Fixed: a socket no watched
    process is known to hold, when the tables are next read (every ``libraries_refresh``, 5 s,
    where a process holds sockets), has the running processes of its owner (its uid in the
    tables) read in full at the next tick."""
    proc, children = swapper
    sampler = SpreadingSampler()
    # Its full reads grown far apart, as they do for a kernel that finds nothing new
    # (KERNEL_FULL_READ_MAX, after a minute or so): what its light reads see is the question.
    monkeypatch.setattr(sampler, "_full_due", lambda state, now, *_: now + 60.0)
    wait_until(lambda: sampler.sample({"k": proc.pid})["k"].parked >= len(children) - 2,
               timeout=30, interval=0.2, what="the sleeping children parked")
    light = sampler.stats.light_reads

    def kernel_sample():
        return sampler.sample({"k": proc.pid})["k"].kernel_process

    wait_until(lambda: kernel_sample() is not None and sampler.stats.light_reads > light,
               timeout=30, what="a light read of the kernel")
    port = listener.getsockname()[1]
    tell(proc, f"swap {port}")
    accepted, _ = listener.accept()
    assert proc.stdout.readline().strip() == "swapped"
    try:
        # well before the full read it waited for (60 s here): the tables are read every 5 s,
        # and a loaded machine's ticks come late
        wait_until(lambda: any(s.remote_port == port for s in kernel_sample().sockets),
                   timeout=30, interval=0.2, what="the swapped-in connection in the sample")
    finally:
        accepted.close()


# ---------------------------------------------------------------- kernel hook: honest cells

@pytest.fixture(scope="module")
def guarded():
    from tests.harness import GuardedServer
    settings = {"sample_interval": 0.5, "stop_grace": 1.0, "cell_checks": True,
                "user_name": "redteam5-today", "strike_limit": 0}
    with GuardedServer(guard=settings) as server:
        yield server


@pytest.mark.integration
def test_honest_magics_that_run_code_are_no_unchecked_cells(guarded, tmp_path):
    """Near-misses for the heartbeat and the audit hook's unchecked cells: %autoreload
    reloading a module the researcher edits, %timeit, %run of a script, %%writefile then
    %run, a function a cell defined called in a later cell and from a thread, %rerun."""
    from tests.test_kernel_hook_tampering import Kernel
    kernel = Kernel(guarded)
    try:
        def ok(code: str) -> str:
            reply, text = kernel.run(code)
            assert reply["status"] == "ok", f"{code[:80]!r}: {text[-300:]}"
            return text

        module = tmp_path / "helpers_rt5.py"
        module.write_text("def value():\n    return 1\n")
        ok(f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n%load_ext autoreload\n"
           "%autoreload 2\nimport helpers_rt5\nprint(helpers_rt5.value())")
        module.write_text("def value():\n    return 2  # edited\n")
        os.utime(module, (time.time() + 5, time.time() + 5))  # newer, whatever the clock's grain
        assert "2" in ok("print(helpers_rt5.value())")
        ok("%timeit -n 3 -r 1 sum(range(100))")
        ok(f"%%writefile {tmp_path}/train_rt5.py\nprint('epoch', 1)\n")
        assert "epoch 1" in ok(f"%run {tmp_path}/train_rt5.py")
        ok("def step(x):\n    return x + 1")
        ok("import threading\nt = threading.Thread(target=step, args=(1,))\nt.start(); t.join()\n"
           "print(step(2))")
        ok("%rerun -l 1")
        kernel.quiet_for(3)
    finally:
        kernel.close()


def test_hostile_pth_files_neither_block_nor_blind_the_reader(tmp_path):
    """A FIFO no one writes and a symlink loop among the .pth files: not opened (a FIFO would
    block the reader as it blocks this Python's start), and the tool in the next one still
    read. (No link to /dev/zero here: the Python started would read it without end.)"""
    site_dir = _user_site(tmp_path)
    os.mkfifo(site_dir / "a-fifo.pth")
    (site_dir / "b-loop.pth").symlink_to(site_dir / "b-loop.pth")
    (site_dir / "zz-tool.pth").write_text("import core\n")
    (site_dir / "core.py").write_text(TOOL)
    started = time.perf_counter()
    assert _process_markers([BASE_PYTHON, *SLEEP], env=_site_env(tmp_path)) == ["pproxy"]
    assert time.perf_counter() - started < 30
