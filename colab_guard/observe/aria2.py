"""What aria2c reads its downloads from besides its command line (issue #17).

aria2c takes a torrent from files as readily as from its arguments: an input file
(``-i FILE``, ``--input-file=FILE``, or ``input-file=`` in its configuration), its
configuration file (``--conf-path=FILE``; without it ``~/.aria2/aria2.conf`` if it exists,
else ``$XDG_CONFIG_HOME/aria2/aria2.conf``; none with ``--no-conf``), and any local file it
is given whose content is a bencoded dictionary, whatever its name (aria2 takes a file
starting with ``d`` for a torrent). A program whose content shows aria2 (content.py) has
these files read as aria2c reads them, and only what starts a download counts: a URI, a
``torrent-file=``. An option that merely configures BitTorrent (``bt-max-peers=``,
``seed-time=`` in a configuration file copied from a guide and used for HTTP downloads) is
not a torrent; nor is a word in a file aria2c does not read.

Standard library only; the reading itself is the caller's (``read``: bounded, regular files
only, never a FIFO), in the content scanner's script threads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

#: Bytes of a configuration or input file read, at most.
OPTION_FILE_BYTES = 1 << 20
#: Local files given as downloads whose first bytes are looked at, at most.
LOCAL_FILES_MAX = 32

#: Short options whose value is the next word when not joined (``-i list.txt``).
_SHORT_WITH_VALUE = frozenset("tmldosijxkUuTOM")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MAGNET = re.compile(r"(?i)^magnet:\?")
#: A bencoded dictionary's start: ``d`` and a key's length (``d8:announce``, ``d4:info``).
_BENCODED = re.compile(rb"^d[0-9]+:")

Read = Callable[[str, int], "bytes | None"]  # (path, most bytes) -> its first bytes, or None


@dataclass
class Invocation:
    """What an aria2c command line names: its options (long names, last value last) and the
    downloads given as words."""

    options: dict[str, list[str]] = field(default_factory=dict)
    uris: list[str] = field(default_factory=list)

    def last(self, name: str) -> str | None:
        values = self.options.get(name)
        return values[-1] if values else None


#: Long options aria2c also accepts abbreviated (getopt): the shortest unambiguous prefix.
_ABBREVIATED = {"conf-path": "conf", "input-file": "inp", "torrent-file": "tor",
                "follow-torrent": "follow-t", "no-conf": "no-c"}
_SHORT_NAMES = {"i": "input-file", "T": "torrent-file"}


def _long_name(name: str) -> str:
    for full, shortest in _ABBREVIATED.items():
        if name.startswith(shortest) and full.startswith(name):
            return full
    return name


def invocation(cmdline: list[str]) -> Invocation:
    """The options and download words of an aria2c command line."""
    found = Invocation()
    words = iter(cmdline[1:])
    for word in words:
        if word == "--":
            found.uris += list(words)
        elif word.startswith("--"):
            name, joined, value = word[2:].partition("=")
            name = _long_name(name)
            if not joined and name in ("conf-path", "input-file", "torrent-file"):
                value = next(words, "")
            found.options.setdefault(name, []).append(value if joined or value else "true")
        elif word.startswith("-") and len(word) > 1:
            letter, rest = word[1], word[2:]
            if letter in _SHORT_WITH_VALUE and not rest:
                rest = next(words, "")
            if letter in _SHORT_NAMES:
                found.options.setdefault(_SHORT_NAMES[letter], []).append(rest)
        else:
            found.uris.append(word)
    return found


def configuration(text: str) -> dict[str, list[str]]:
    """``name=value`` lines of a configuration file (``#`` lines are comments)."""
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            options.setdefault(name.strip(), []).append(value.strip())
    return options


def input_uris(text: str) -> list[str]:
    """The downloads of an input file: its URI lines, URIs separated by tabs (a line
    starting with white space holds options of the download above; ``#``: a comment)."""
    uris = []
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            uris += [u.strip() for u in line.split("\t") if u.strip()]
    return uris


def _false(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "false"


class Reader:
    """Reads the files one aria2c process reads, as it sees them: relative paths from its
    working directory, ``~`` and the default configuration from its HOME."""

    def __init__(self, pid: int, environ: dict[str, str], home: str, read: Read):
        self.pid, self.environ, self.home, self.read = pid, environ, home, read

    def path(self, name: str) -> str:
        if (name == "~" or name.startswith("~/")) and self.home:
            name = self.home + name[1:]
        if name == "-":
            return f"/proc/{self.pid}/fd/0"  # its standard input (read if a regular file)
        return name if os.path.isabs(name) else os.path.join(f"/proc/{self.pid}/cwd", name)

    def text(self, name: str) -> str:
        data = self.read(self.path(name), OPTION_FILE_BYTES)
        return data.decode("utf-8", "replace") if data else ""

    def default_configuration(self) -> str | None:
        if not self.home:
            return None
        dotted = os.path.join(self.home, ".aria2", "aria2.conf")
        if self.read(dotted, 0) is not None:
            return dotted
        xdg = self.environ.get("XDG_CONFIG_HOME") or os.path.join(self.home, ".config")
        return os.path.join(xdg, "aria2", "aria2.conf")

    def torrent_file(self, uri: str) -> bool:
        """A local file aria2c takes for a torrent (its content a bencoded dictionary)."""
        head = self.read(self.path(uri), 16)
        return bool(head) and _BENCODED.match(head) is not None


def given_a_torrent(cmdline: list[str], reader: Reader) -> bool:
    """Whether aria2c, started with ``cmdline``, downloads a torrent or a magnet link: given
    in the files it reads (its configuration, its input file), or on its command line (a
    local file of any name read for its content; the words themselves are also the
    signature's ``args``)."""
    given = invocation(cmdline)
    options: dict[str, list[str]] = {}
    no_conf = given.last("no-conf")
    if no_conf is None or _false(no_conf):
        conf = given.last("conf-path") or reader.default_configuration()
        options = configuration(reader.text(conf)) if conf else {}
    for name, values in given.options.items():  # the command line's override the file's
        options[name] = values
    if any(v for v in options.get("torrent-file", [])):
        return True
    uris = list(given.uris)
    for name in options.get("input-file", [])[-1:]:
        uris += input_uris(reader.text(name))
    follow = not _false((options.get("follow-torrent") or [None])[-1])
    locals_read = 0
    for uri in uris:
        named = uri.lower().endswith(".torrent")
        if _MAGNET.match(uri) or (_SCHEME.match(uri) and named and follow):
            return True  # a magnet link; a torrent downloaded, then followed
        if not _SCHEME.match(uri) and locals_read < LOCAL_FILES_MAX:
            locals_read += 1
            if named or reader.torrent_file(uri):
                return True
    return False
