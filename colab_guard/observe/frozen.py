"""The Python code a PyInstaller-frozen program carries (PyInstaller's CArchive and PYZ).

A program frozen with PyInstaller is its bootloader (an ELF) with an archive appended: on
Linux the ELF section ``pydata`` (PyInstaller adds it with objcopy), or plain appended data.
The archive ends with a cookie (``MEI\\x0c\\x0b\\x0a\\x0b\\x0e``, the archive's length, its
table's offset and length, the Python version); its table lists entries: ``s`` the entry
scripts (marshaled code objects, zlib-compressed), ``z`` a PYZ archive (``PYZ\\0``, the
Python magic number, the offset of its table: a marshaled list of ``(name, (kind, offset,
length))``, each entry a zlib-compressed marshaled code object), ``b``/``x``/... binaries
and data (not read here). As PyInstaller's own reader (PyInstaller/archive/readers.py,
loader/pyimod01_archive.py) reads it.

Everything is read from the user's file: every offset and length is checked against the
file and the archive, every read counted against a byte budget, entries and modules counted,
decompression bounded by ``zlib``'s ``max_length`` (a decompression bomb gives its first
bytes). ``marshal`` is not meant for hostile data, so code is only ever unmarshaled in the
script reader's child process (scripts.py, which this module's source is given to): here,
only ``find_archive`` runs in the guard itself (a few small reads). Standard library only.
"""

from __future__ import annotations

import os
import struct
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

COOKIE_MAGIC = b"MEI\x0c\x0b\x0a\x0b\x0e"
_COOKIE = struct.Struct("!8sIIII64s")  # magic, archive length, toc offset, toc length, pyvers
_ENTRY = struct.Struct("!IIIIBc")  # entry length, offset, length, raw length, compressed, kind
_PYZ_HEAD = struct.Struct("!4s4si")  # b"PYZ\0", the Python magic number, the toc's offset

#: Bytes at a file's end searched for the cookie (an archive appended, not in a section).
TAIL_SEARCH = 64 << 10
MAX_SECTIONS = 4096  # ELF section headers read, at most
NAMES_MAX = 64 << 10  # bytes of their names read, at most
TOC_MAX = 1 << 20  # bytes of the archive's table read, at most
TOC_ENTRIES_MAX = 8192  # entries of the archive's table, at most
PYZ_TOC_MAX = 4 << 20  # bytes of the PYZ's table (a marshaled list), at most
PYZ_ENTRIES_MAX = 65536
SCRIPTS_MAX = 16  # entry scripts read, at most
MODULES_MAX = 32  # PYZ modules read (those the scripts import, and theirs), at most
ENTRY_MAX = 4 << 20  # compressed bytes of one entry read, at most
READ_MAX = 24 << 20  # bytes read from the file in all, at most


class Refused(Exception):
    """Past a bound, outside the file, or not what PyInstaller writes."""


@dataclass(frozen=True)
class Archive:
    start: int  # the archive's first byte in the file
    end: int  # just past its cookie
    toc_offset: int  # from start
    toc_length: int
    python: int  # the version that built it: 311 for 3.11 (37 for 3.7 in old builds)


@dataclass(frozen=True)
class Entry:
    name: str
    offset: int  # from the archive's start
    length: int  # stored
    raw_length: int  # decompressed
    compressed: bool
    kind: str


class Budget:
    """Reads of one file, counted against bounds (bytes, a deadline)."""

    def __init__(self, fd: int, size: int, read_max: int = READ_MAX,
                 deadline: float | None = None):
        self.fd, self.size, self.read_max, self.deadline = fd, size, read_max, deadline
        self.bytes_read = 0
        self.entries = 0  # table entries and modules looked at

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise Refused("outside the file")
        if self.bytes_read + length > self.read_max:
            raise Refused("past the byte budget")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Refused("past the time budget")
        data = os.pread(self.fd, length, offset)
        self.bytes_read += len(data)
        if len(data) != length:
            raise Refused("a short read")
        return data

    def count(self, entries: int = 1) -> None:
        self.entries += entries


# ------------------------------------------------------------------ the archive


def find_archive(fd: int, size: int, budget: Budget | None = None) -> Archive | None:
    """The PyInstaller archive in the open file: through its ELF ``pydata`` section, else
    its cookie in the file's last ``TAIL_SEARCH`` bytes. None if there is none (or it is
    malformed)."""
    budget = budget or Budget(fd, size, read_max=TOC_MAX)
    for where in (_section_cookie, _tail_cookie):
        try:
            cookie_at = where(budget)
            archive = None if cookie_at is None else \
                _archive_at(budget, cookie_at, any_magic=where is _section_cookie)
        except (Refused, OSError, struct.error):
            continue
        if archive is not None:
            return archive
    return None


def _section_cookie(budget: Budget) -> int | None:
    """Where the cookie of the ELF section holding the archive is (the section's last
    bytes): ``pydata``, or any section that ends with a cookie whose archive is that whole
    section (renamed, its magic patched: the bootloader still finds it by its own copy of
    the magic, which can be patched alike)."""
    head = budget.read(0, 64) if budget.size >= 64 else b""
    if not head.startswith(b"\x7fELF\x02\x01"):
        return None
    shoff, = struct.unpack_from("<Q", head, 0x28)
    entsize, count, names = struct.unpack_from("<HHH", head, 0x3A)
    if not shoff or entsize < 64 or not 0 < count <= MAX_SECTIONS or names >= count:
        return None
    table = budget.read(shoff, entsize * count)
    sections = [struct.unpack_from("<IIQQQQ", table, i * entsize) for i in range(count)]
    strings = budget.read(sections[names][4], min(sections[names][5], NAMES_MAX))
    for name, _, _, _, offset, length in sections:
        if length >= _COOKIE.size and strings[name:name + 7] == b"pydata\0":
            return offset + length - _COOKIE.size
    for _, kind, _, _, offset, length in sections:
        if kind != _NOBITS and length >= _COOKIE.size and offset + length <= budget.size and \
                _whole_section(budget, offset, length):
            return offset + length - _COOKIE.size
    return None


_NOBITS = 8  # a section with no bytes in the file (.bss)


def _whole_section(budget: Budget, offset: int, length: int) -> bool:
    """Whether the section ends with a cookie (whatever its magic) of an archive that is the
    whole section, its table within it."""
    _, archive_length, toc_offset, toc_length, _, _ = _COOKIE.unpack(
        budget.read(offset + length - _COOKIE.size, _COOKIE.size))
    return archive_length == length and _ENTRY.size <= toc_length <= TOC_MAX and \
        toc_offset + toc_length <= length - _COOKIE.size


def _tail_cookie(budget: Budget) -> int | None:
    start = max(0, budget.size - TAIL_SEARCH)
    at = budget.read(start, budget.size - start).rfind(COOKIE_MAGIC)
    return start + at if at >= 0 else None


def _archive_at(budget: Budget, cookie_at: int, any_magic: bool = False) -> Archive | None:
    magic, length, toc_offset, toc_length, python, _ = _COOKIE.unpack(
        budget.read(cookie_at, _COOKIE.size))
    end = cookie_at + _COOKIE.size
    start = end - length
    if (magic != COOKIE_MAGIC and not any_magic) or start < 0 or toc_length > TOC_MAX or \
            toc_offset + toc_length > cookie_at - start:
        return None
    return Archive(start, end, toc_offset, toc_length, python)


def entries(archive: Archive, budget: Budget) -> list[Entry]:
    """The archive's table (``TOC_ENTRIES_MAX`` entries at most; Refused if malformed)."""
    data = budget.read(archive.start + archive.toc_offset, archive.toc_length)
    found, at = [], 0
    while at < len(data):
        if len(found) >= TOC_ENTRIES_MAX:
            raise Refused("too many entries")
        size, offset, length, raw, compressed, kind = _ENTRY.unpack_from(data, at)
        if size < _ENTRY.size or at + size > len(data) or \
                offset + length > archive.end - _COOKIE.size - archive.start:
            raise Refused("a malformed entry")
        name = data[at + _ENTRY.size:at + size].rstrip(b"\0").decode("utf-8", "replace")
        found.append(Entry(name, offset, length, raw, bool(compressed), kind.decode("latin-1")))
        budget.count()
        at += size
    return found


def inflate(data: bytes, limit: int) -> bytes | None:
    """At most ``limit`` bytes of zlib data decompressed (a bomb gives its first ones)."""
    try:
        return zlib.decompressobj().decompress(data, limit)
    except zlib.error:
        return None


def entry_data(archive: Archive, entry: Entry, budget: Budget, limit: int) -> bytes | None:
    """An entry's bytes, decompressed, up to ``limit``."""
    if entry.length > ENTRY_MAX:
        return None
    data = budget.read(archive.start + entry.offset, entry.length)
    return inflate(data, limit) if entry.compressed else data[:limit]


# ------------------------------------------------------------------ the PYZ


@dataclass
class Pyz:
    start: int  # in the file
    magic: bytes  # the Python magic number its code was compiled with
    modules: dict[str, tuple[int, int, int]]  # name -> (kind, offset, length)


def read_pyz(archive: Archive, entry: Entry, budget: Budget) -> Pyz | None:
    """A PYZ entry's table (unmarshaled: in the child process only)."""
    import marshal

    start = archive.start + entry.offset
    magic_text, magic, toc_offset = _PYZ_HEAD.unpack(budget.read(start, _PYZ_HEAD.size))
    length = entry.length - toc_offset
    if magic_text != b"PYZ\0" or not _PYZ_HEAD.size <= toc_offset < entry.length or \
            length > PYZ_TOC_MAX:
        return None
    try:
        table = marshal.loads(budget.read(start + toc_offset, length))
    except (ValueError, EOFError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(table, dict):
        table = list(table.items())
    if not isinstance(table, (list, tuple)):
        return None
    modules = {}
    for item in table[:PYZ_ENTRIES_MAX]:
        if _pyz_item(item, entry.length):
            modules[item[0]] = tuple(item[1])
    return Pyz(start, magic, modules)


def _pyz_item(item, pyz_length: int) -> bool:
    """``(name, (kind, offset, length))`` within the PYZ."""
    return (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], (tuple, list)) and len(item[1]) == 3
            and all(isinstance(v, int) for v in item[1])
            and 0 <= item[1][1] and 0 <= item[1][2] <= ENTRY_MAX
            and item[1][1] + item[1][2] <= pyz_length)


PYZ_PACKAGE = 1


def pyz_module(pyz: Pyz, name: str, budget: Budget, limit: int) -> tuple[bytes, bool] | None:
    """A module's marshaled code (decompressed, up to ``limit``) and whether it is a package."""
    found = pyz.modules.get(name)
    if found is None:
        return None
    kind, offset, length = found
    data = inflate(budget.read(pyz.start + offset, length), limit)
    return None if data is None else (data, kind == PYZ_PACKAGE)


# ------------------------------------------------------------------ the program


#: read_code(name, marshaled code, package) -> the modules that code imports (absolute,
#: ".x" relative to the code's package), to be read next.
CodeReader = Callable[[str, bytes, str], list[str]]
#: shadowing(name, marshaled code, is_package) -> whether a module named as one of the
#: standard library's is not its code (the program's own under that name: ``this``).
ShadowCheck = Callable[[str, bytes, bool], bool]
STANDARD_MAX = 2048  # modules named as the standard library's compared with it, at most


def read_program(fd: int, size: int, read_code: CodeReader, limit: int,
                 budget: Budget | None = None, shadowing: ShadowCheck | None = None,
                 later: Callable[[], list[str]] | None = None) -> Archive | None:
    """Feeds ``read_code`` the entry scripts of a PyInstaller program, then the modules of its
    PYZ they import, and those these import (breadth first, ``MODULES_MAX`` at most), each
    decompressed up to ``limit``; then, given ``shadowing``, the modules named as the
    standard library's that are not its code (wherever they are imported from), and theirs;
    then ``later()``'s (the libraries the code imported that it reads last), within the same
    ``MODULES_MAX``. None: not a PyInstaller program (or malformed); a program past a bound
    gives what was read before it."""
    budget = budget or Budget(fd, size)
    archive = find_archive(fd, size, budget)
    if archive is None:
        return None
    try:
        table = entries(archive, budget)
        waiting = _read_scripts(archive, table, budget, read_code, limit)
        pyz_entry = next((e for e in table if e.kind == "z"), None)
        pyz = read_pyz(archive, pyz_entry, budget) if pyz_entry is not None else None
        if pyz is not None:
            seen: set[str] = set()
            read = _read_modules(pyz, waiting, budget, read_code, limit, seen, 0)
            if shadowing is not None and read < MODULES_MAX:
                shadows = _shadows(pyz, budget, shadowing, limit, seen)
                read = _read_modules(pyz, shadows, budget, read_code, limit, seen, read)
            if later is not None and read < MODULES_MAX:
                _read_modules(pyz, later(), budget, read_code, limit, seen, read)
    except (Refused, OSError, struct.error):
        pass
    return archive


def _read_scripts(archive: Archive, table: list[Entry], budget: Budget,
                  read_code: CodeReader, limit: int) -> list[str]:
    """The entry scripts, in the order the bootloader runs them; the modules they import."""
    imports: list[str] = []
    for entry in [e for e in table if e.kind == "s"][:SCRIPTS_MAX]:
        data = entry_data(archive, entry, budget, limit)
        if data is not None:
            imports += read_code(entry.name, data, "")
    return imports


def _read_modules(pyz: Pyz, waiting: list[str], budget: Budget, read_code: CodeReader,
                  limit: int, seen: set[str], read: int) -> int:
    """Breadth first from ``waiting``; how many modules have been read in all."""
    queue = deque((name, "") for name in waiting)
    while queue and read < MODULES_MAX:
        wanted, package = queue.popleft()
        name = _resolve(pyz, wanted, package)
        if name is None or name in seen:
            continue
        seen.add(name)
        found = pyz_module(pyz, name, budget, limit)
        budget.count()
        if found is None:
            continue
        read += 1
        data, is_package = found
        own_package = name if is_package else name.rpartition(".")[0]
        queue.extend((m, own_package) for m in read_code(name, data, own_package))
    return read


def _shadows(pyz: Pyz, budget: Budget, shadowing: ShadowCheck, limit: int,
             seen: set[str]) -> list[str]:
    """The PYZ's modules named as the standard library's whose code is not its own. All of
    them are compared (``STANDARD_MAX`` at most), not only those the program's code imports:
    a copy of ``json`` changed only in ``json.decoder`` is imported by ``json`` alone."""
    found, checked = [], 0
    for name in pyz.modules:
        if name in seen or name.split(".")[0] not in sys.stdlib_module_names:
            continue
        if checked >= STANDARD_MAX:
            break
        checked += 1
        module = pyz_module(pyz, name, budget, limit)
        budget.count()
        if module is not None and shadowing(name, *module):
            found.append(name)
    return found


def read_data(fd: int, size: int, wanted: set[str], limit: int,
              budget: Budget | None = None) -> list[tuple[str, bytes]]:
    """The archive's data files (``--add-data``: in a one-file program they are in it) named
    in ``wanted`` (or whose base name is), ``SCRIPTS_MAX`` at most, each up to ``limit``."""
    budget = budget or Budget(fd, size)
    found: list[tuple[str, bytes]] = []
    archive = find_archive(fd, size, budget)
    if archive is None or not wanted:
        return found
    try:
        for entry in entries(archive, budget):
            if entry.kind == "x" and len(found) < SCRIPTS_MAX and \
                    (entry.name in wanted or entry.name.rpartition("/")[2] in wanted):
                data = entry_data(archive, entry, budget, limit)
                if data is not None:
                    found.append((entry.name, data))
    except (Refused, OSError, struct.error):
        pass
    return found


def _resolve(pyz: Pyz, name: str, package: str) -> str | None:
    """A module's name in the PYZ: ``name`` itself, or relative to ``package``."""
    bare = name.lstrip(".")
    candidates = [] if name.startswith(".") else [name]
    if package and bare:
        candidates.append(f"{package}.{bare}")
    return next((c for c in candidates if c in pyz.modules), None)
