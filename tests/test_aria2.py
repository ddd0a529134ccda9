"""aria2c's option files read for a torrent (observe/aria2.py, content.py's aria2 markers):
real files, read through real processes' working directories and environments."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time

import pytest

from colab_guard.observe import aria2
from colab_guard.observe.content import ARIA2_BITTORRENT, ContentScanner, scan_file
from tests.harness import wait_until
from tests.standins.common import bencode

MAGNET = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"


def _torrent(path) -> str:
    piece = bytes(16384)
    path.write_bytes(bencode({"announce": "http://127.0.0.1:1/announce", "info": {
        "name": "data.bin", "length": len(piece), "piece length": len(piece),
        "pieces": hashlib.sha1(piece).digest()}}))
    return str(path)


@pytest.fixture
def standin(tmp_path):
    """``standin(env=..., stdin=...)``: a sleeping process in tmp_path (its working directory
    and environment are what aria2c's would be); the pid."""
    started = []

    def start(env: dict | None = None, stdin=None) -> int:
        proc = subprocess.Popen(["sleep", "60"], cwd=tmp_path, stdin=stdin,
                                env={"PATH": os.environ["PATH"], **(env or {})})
        started.append(proc)
        wait_until(lambda: open(f"/proc/{proc.pid}/cmdline", "rb").read().startswith(b"sleep"),
                   timeout=10, what="the stand-in started")  # its own environment, exec'd
        return proc.pid

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _marked(pid: int, cmdline: list[str]) -> bool:
    found = ContentScanner(background=False).aria2_markers(pid, cmdline, None)
    return found == [ARIA2_BITTORRENT]


# ---------------------------------------------------------------- the command line

def test_the_option_files_named_on_its_command_line_are_found():
    given = aria2.invocation(["fetcher", "-i", "a.txt", "--conf", "x.conf", "-x16", "-d", "out",
                              "--inp=b.txt", "-T", "t", "--continue", "data.bin", "--", "-odd"])
    assert given.options["input-file"] == ["a.txt", "b.txt"]
    assert given.last("conf-path") == "x.conf"
    assert given.last("torrent-file") == "t"
    assert given.uris == ["data.bin", "-odd"]  # not "16" nor "out": options' values
    assert aria2.invocation(["aria2c", "--no-conf"]).last("no-conf") == "true"
    assert aria2.invocation(["aria2c", "--follow-t=false"]).last("follow-torrent") == "false"


def test_a_configuration_and_an_input_file_are_read_as_aria2c_reads_them():
    conf = aria2.configuration("# input-file=x.torrent\n dir = /d \ninput-file=list.txt\n")
    assert conf == {"dir": ["/d"], "input-file": ["list.txt"]}
    listed = aria2.input_uris(f"http://a/x\thttp://b/x\n  out=y.torrent\n# {MAGNET}\n{MAGNET}\n")
    assert listed == ["http://a/x", "http://b/x", MAGNET]


# ---------------------------------------------------------------- given a torrent in files

def test_a_renamed_aria2c_given_a_torrent_of_any_name_by_its_configuration_is_marked(tmp_path):
    """As red team 11 did: the torrent (named data.bin) listed in an input file named by the
    configuration file, the only argument; a real aria2c (its tracker refuses)."""
    tool = tmp_path / "fetcher"
    shutil.copy(shutil.which("aria2c") or pytest.skip("aria2c is not installed"), tool)
    (tmp_path / "list.txt").write_text(_torrent(tmp_path / "data.bin") + "\n")
    (tmp_path / "fetch.conf").write_text(f"input-file={tmp_path / 'list.txt'}\n"
                                         f"dir={tmp_path / 'out'}\nenable-dht=false\nquiet=true\n")
    proc = subprocess.Popen([str(tool), f"--conf-path={tmp_path / 'fetch.conf'}"], cwd=tmp_path)
    try:
        wait_until(lambda: os.readlink(f"/proc/{proc.pid}/exe") == str(tool), timeout=10,
                   what="aria2c started")
        scanner = ContentScanner(background=False)
        markers = scanner.process_markers(proc.pid, str(tool), proc.args)
        assert "aria2" in markers and ARIA2_BITTORRENT in markers
        assert proc.poll() is None  # it was running, doing BitTorrent
    finally:
        proc.kill()
        proc.wait()


def test_its_default_configuration_in_its_home_is_read_with_no_argument(tmp_path, standin):
    (tmp_path / ".aria2").mkdir()
    (tmp_path / ".aria2" / "aria2.conf").write_text("input-file=list.txt\n")  # from its cwd
    (tmp_path / "list.txt").write_text(MAGNET + "\n")
    assert _marked(standin({"HOME": str(tmp_path)}), ["aria2c"])
    assert not _marked(standin({"HOME": str(tmp_path)}), ["aria2c", "--no-conf"])
    assert not _marked(standin({"HOME": "/nonexistent"}), ["aria2c"])


def test_the_xdg_configuration_is_read_only_without_the_dotted_one(tmp_path, standin):
    xdg = tmp_path / "config" / "aria2"
    xdg.mkdir(parents=True)
    (xdg / "aria2.conf").write_text(f"torrent-file={_torrent(tmp_path / 't')}\n")
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    assert _marked(standin(env), ["aria2c"])
    (tmp_path / ".aria2").mkdir()
    (tmp_path / ".aria2" / "aria2.conf").write_text("max-tries=3\n")  # aria2c reads this one
    assert not _marked(standin(env), ["aria2c"])


def test_an_input_file_on_the_command_line_or_its_standard_input_is_read(tmp_path, standin):
    (tmp_path / "list.txt").write_text(f"https://example.org/a.iso\n{MAGNET}\n")
    pid = standin({"HOME": str(tmp_path)})
    assert _marked(pid, ["aria2c", "-i", "list.txt"])
    assert _marked(pid, ["aria2c", "--inp=list.txt"])  # getopt's abbreviation
    with open(tmp_path / "list.txt") as stdin:
        assert _marked(standin({"HOME": str(tmp_path)}, stdin=stdin), ["aria2c", "-i", "-"])
    assert _marked(pid, ["aria2c", _torrent(tmp_path / "archive.dat")])  # by its content


# ---------------------------------------------------------------- near misses

def test_bittorrent_options_for_http_and_ftp_downloads_are_no_torrent(tmp_path, standin):
    (tmp_path / "list.txt").write_text(
        "https://example.org/weights.bin\n  out=weights.torrent\n"
        f"ftp://example.org/corpus.txt\n# {MAGNET}\n")
    (tmp_path / "seedbox.conf").write_text(
        "enable-dht=true\nbt-max-peers=55\nseed-time=0\nfollow-torrent=mem\nlisten-port=6881-6999\n"
        "# torrent-file=x.torrent\ninput-file=list.txt\n")
    (tmp_path / "other.txt").write_text(MAGNET + "\n")  # a file it does not read
    (tmp_path / "dates.csv").write_text("date,value\n2024-01-01,3\n")  # starts with a d
    pid = standin({"HOME": str(tmp_path)})
    assert not _marked(pid, ["aria2c", "--conf-path=seedbox.conf"])
    assert not _marked(pid, ["aria2c", "--conf-path=seedbox.conf", "dates.csv", "other"])
    assert not _marked(pid, ["aria2c", "--follow-torrent=false", "https://example.org/x.torrent"])
    assert _marked(pid, ["aria2c", "https://example.org/x.torrent"])  # downloaded, then followed


def test_a_fifo_named_as_its_input_file_is_not_opened(tmp_path, standin):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "fifo.conf").write_text("input-file=pipe\n")
    started = time.monotonic()
    assert not _marked(standin({"HOME": str(tmp_path)}), ["aria2c", "--conf-path=fifo.conf"])
    assert time.monotonic() - started < 5


def test_only_aria2_has_its_option_files_read(tmp_path):
    """The same arguments to another program: its files are not aria2c's (no marker)."""
    (tmp_path / "list.txt").write_text(MAGNET + "\n")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-i",
                             "list.txt"], cwd=tmp_path)
    try:
        wait_until(lambda: b"-i" in open(f"/proc/{proc.pid}/cmdline", "rb").read(),
                   timeout=10, what="the program started")
        scanner = ContentScanner(background=False)
        assert ARIA2_BITTORRENT not in scanner.process_markers(proc.pid, sys.executable, proc.args)
    finally:
        proc.kill()
        proc.wait()


def test_aria2c_carries_its_marker_and_interpreters_do_not():
    program = shutil.which("aria2c") or pytest.skip("aria2c is not installed")
    assert "aria2" in scan_file(os.path.realpath(program), 64 << 20)
    assert "aria2" not in scan_file(os.path.realpath(sys.executable), 64 << 20)
