"""A program run by the dynamic loader: `/lib64/ld-linux-x86-64.so.2 /bin/dash -i`,
`ld.so --argv0 kworker /usr/bin/python3 miner.py`.

The kernel then starts the loader as the program: the process's file is the loader, its
first word the loader's, and what runs is the program the loader mapped, with the arguments
after it. Judged as the loader, such a process was no shell and no interpreter: its loop
through nc no reverse shell, its script never read. The sampler judges it as the program it
runs (its file, read in the process's root; its arguments), with the trait ``exe:loaded``.

Told by what the process is, not by the loader's name (a renamed copy of it, another
loader, qemu-user or valgrind run the same way): its file was started with no ELF
interpreter (the auxiliary vector's AT_BASE is 0: a loader, or a static program), and one
of its first arguments names a file it has mapped executable, other than its own.
"""

from __future__ import annotations

import os
import struct

#: The auxiliary vector's entry for where the kernel loaded the program's ELF interpreter
AT_BASE = 7
#: Words of a command line looked up as the program (the loader's options, skipped, do not
#: count: ld.so takes any number of them, `--inhibit-cache` twenty times)
MAX_WORDS = 16
#: A process this old whose program was not found is not looked at again (the loader maps its
#: program within milliseconds of its start)
SETTLED_AFTER = 2.0
#: The loader's options that take a value (glibc's ld.so): the word after is no program
VALUE_OPTIONS = frozenset({"--library-path", "--preload", "--argv0", "--audit", "--inhibit-rpath",
                           "--glibc-hwcaps-prepend", "--glibc-hwcaps-mask"})
#: The trait of a process the sampler judges as the program a loader runs
EXE_LOADED = "exe:loaded"


def started_by_interpreter(pid: int) -> bool | None:
    """Whether the kernel started the process's file through an ELF interpreter (a
    dynamically linked program: AT_BASE is where it loaded it); None if unreadable."""
    try:
        with open(f"/proc/{pid}/auxv", "rb") as f:
            data = f.read(4096)
    except OSError:
        return None
    for key, value in struct.iter_unpack("<QQ", data[:len(data) - len(data) % 16]):
        if key == AT_BASE:
            return value != 0
    return False


def loaded_program(pid: int, cmdline: list[str], mapped: list[tuple[str, int]],
                   own_inode: int | None) -> tuple[str, list[str]] | None:
    """The program a process started with no interpreter runs, and its arguments: the first
    of its arguments that names a file it has mapped executable (``mapped``: (path as its
    maps name it, inode)), not its own (``own_inode``), nor an option's value (a library
    ``--preload``ed is mapped executable too). Its first word is the loader's ``--argv0`` if
    given. None if none is."""
    inodes = {inode: path for path, inode in mapped if inode != own_inode}
    looked = 0
    for at, word in enumerate(cmdline[1:], 1):
        if not word or word.startswith("-") or cmdline[at - 1] in VALUE_OPTIONS:
            continue
        looked += 1
        if looked > MAX_WORDS:
            break
        try:
            # (no device: maps shows an overlay's layer's)
            inode = os.stat(_where(pid, word)).st_ino
        except (OSError, ValueError):
            continue
        if inode in inodes:
            return _unescaped(pid, inodes[inode], inode), \
                [_argv0(cmdline[1:at]) or word] + cmdline[at + 1:]
    return None


#: Paths that name the process looking them up: looked up as the process's, not the guard's
#: (`ld.so /dev/fd/3 -i 3<kworker`)
OWN_PATHS = (("/proc/self/", "/proc/{pid}/"), ("/proc/thread-self/", "/proc/{pid}/"),
             ("/dev/fd/", "/proc/{pid}/fd/"), ("/dev/stdin", "/proc/{pid}/fd/0"))


def _where(pid: int, word: str) -> str:
    """Where the process finds the file ``word`` names: in its root, or its folder."""
    for own, its in OWN_PATHS:
        if word.startswith(own):
            return its.format(pid=pid) + word[len(own):]
    return f"/proc/{pid}/root{word}" if word.startswith("/") else f"/proc/{pid}/cwd/{word}"


def _unescaped(pid: int, path: str, inode: int) -> str:
    """The path maps names, as the file is named: maps writes a newline in it as ``\\012``
    (a program named `kworker\\n`, read at the escaped path, was no file: never read). The
    path as it stands where a file of that name is not the program's."""
    if "\\012" not in path:
        return path
    named = path.replace("\\012", "\n")
    try:
        return named if os.stat(f"/proc/{pid}/root{named}").st_ino == inode else path
    except (OSError, ValueError):
        return path


def _argv0(options: list[str]) -> str | None:
    """The loader's ``--argv0 NAME`` (glibc 2.33), or None."""
    for at, word in enumerate(options):
        if word == "--argv0" and at + 1 < len(options):
            return options[at + 1]
        if word.startswith("--argv0="):
            return word.partition("=")[2]
    return None


def program_file(pid: int, exe: str) -> str:
    """Where the process's program is read: its /proc/PID/exe, or, where the sampler names a
    program a loader runs as its ``exe`` (another file than the process's own, in a process
    started with no interpreter), that file in the process's root."""
    own = f"/proc/{pid}/exe"
    try:
        link = os.readlink(own)
    except OSError:
        return own
    if not exe.startswith("/") or link.split("\x00")[0] == exe or link == exe + " (deleted)" \
            or started_by_interpreter(pid) is not False:
        return own
    return f"/proc/{pid}/root{exe}"
