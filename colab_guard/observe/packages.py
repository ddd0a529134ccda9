"""Fair strikes: does an offending program come from an installed Python distribution?

A program whose executable, or whose Python script, is a file that an installed
distribution put there (a compromised release from an index, such as ultralytics
8.3.41, which ran a miner inside its users' notebooks) is named on its incident and
counts as no strike. Only what the guard can check counts; anything else fails safe
(no package: the normal rule):

- the file lies in a ``site-packages``/``dist-packages`` folder laid out as a Python
  environment's (``<prefix>/lib[64]/pythonX.Y/site-packages``, the prefix holding a
  ``pyvenv.cfg`` or a ``bin/python*``, or being a ``.local`` user scheme), or in that
  prefix's ``bin`` (console scripts);
- a ``*.dist-info/RECORD`` there lists the file with a hash, and the file's content has
  that hash (a package file the user edited afterwards is the user's code); an executable
  is hashed as the process runs it (``/proc/PID/exe``), so a file swapped after the start
  does not pass;
- the distribution was not installed from a local path (``direct_url.json`` with a
  ``file://`` URL: ``pip install ./mine``, editable installs): that is the user's own code;
- nothing of the user's runs inside the program (``_refuse_users_code``): no loader or
  Python path variable naming a place the user can change, no code mapped from a file the
  user can change that no distribution installed, no ``-i``/PYTHONINSPECT, an
  interpreter that is root's file, no argument naming a file that is not the distribution's,
  every Python file of the distribution as installed and unchanged since the start, no
  ``__pycache__`` written after the install, nothing unlisted importable beside the script,
  no ``.pth`` import line or ``sitecustomize`` no distribution installed (the environment's
  site folder, the user's own);
- an offender that is not a package's program counts only if it is a system shell that
  started one (and holds no connection).

What a user can still forge (README "Strikes"; tests/test_redteam_fair_strikes.py): a
package of their own, uploaded to an index or laid out by hand (under any name); an honest
package's program running their code through an edited file of another distribution (a
dependency); inline code (``ipython -c``); a forbidden tool from an index run on purpose. The hub
service groups incidents by package, so an admin sees a package that only one user ever
ran, and decides. Python's ``-m module`` and ``-c`` programs and the kernel
itself are not traced to a package (the path Python would import from depends on the
process's working folder and environment): the normal rule applies.

Metadata is read as files (RECORD, METADATA, direct_url.json); nothing of the user's is
imported. Every file is opened without blocking and read only if it is a regular file of
bounded size (a named pipe in its place must not hang the guard), one search stops after
``SEARCH_BUDGET`` seconds (a site folder with a million dist-info folders) and one lookup
after ``LOOKUP_BUDGET``: no package.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import site
import stat
import threading
import time
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path

import psutil

from . import procfs
from .attribution import same_process
from .loader import EXE_LOADED
from .model import Process

SITE_FOLDERS = ("site-packages", "dist-packages")
_PYTHON_FOLDER = re.compile(r"^python\d+(\.\d+)?t?$")
_INTERPRETER = re.compile(r"^python\d*(\.\d+)?t?$")
MAX_HASHED = 64 * 2**20  # bytes: a larger file is not hashed (no package)
MAX_RECORD = 16 * 2**20  # bytes of one RECORD file
MAX_METADATA = 2**20  # bytes of METADATA or direct_url.json
SEARCH_BUDGET = 2.0  # seconds one search of a site folder may take
#: Seconds one lookup (every program of an incident, every check) may take: an incident of a
#: hundred programs of a large distribution must not keep a worker busy for minutes.
LOOKUP_BUDGET = 4.0
_lookup = threading.local()
# Options of the interpreter that take a value (python -W error x.py).
_OPTIONS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs"}


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    path: str  # the offending file the distribution installed
    dist_info: Path | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "path": self.path}


class NotFromPackage(Exception):
    """Why a program under a site folder was not counted as the package's (for the evidence)."""


@dataclass(frozen=True)
class _Entry:
    dist_info: Path
    hash: str  # "sha256=..." from RECORD
    size: int | None = None  # bytes, from RECORD


class PackageIndex:
    """Which distribution installed a file: its site folder's RECORD files searched, the
    distribution named like the file's top-level folder (or script) first, so that a lookup
    usually reads one RECORD. Answers are cached until the site folder changes (an install
    or uninstall changes its entries, so its mtime)."""

    def __init__(self, size: int = 4096):
        self._lock = threading.Lock()
        self._size = size
        self._found: dict[tuple[Path, str], tuple[int, _Entry | None]] = {}

    def entry(self, site_dir: Path, path: str) -> _Entry | None:
        stamp = os.stat(site_dir).st_mtime_ns
        with self._lock:
            cached = self._found.get((site_dir, path))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found = _search(site_dir, path)
        with self._lock:
            if len(self._found) >= self._size:
                self._found.clear()
            self._found[(site_dir, path)] = (stamp, found)
        return found


def _search(site_dir: Path, path: str) -> _Entry | None:
    """The RECORD entry (with a hash) of ``path`` in ``site_dir``'s distributions."""
    relative = os.path.relpath(path, site_dir)
    top = relative.split(os.sep, 1)[0]
    likely = _normalise(os.path.basename(path) if top == os.pardir else top)
    basename = os.path.basename(path)
    deadline = time.monotonic() + SEARCH_BUDGET
    for dist_info in sorted(site_dir.glob("*.dist-info"),
                            key=lambda d: _normalise(d.name.split("-", 1)[0]) != likely):
        _check_time()
        if time.monotonic() > deadline:
            raise NotFromPackage(f"{site_dir}: searching its distributions took over "
                                 f"{SEARCH_BUDGET:g} s")
        text = read_regular(dist_info / "RECORD", MAX_RECORD)
        if text is None or basename not in text:
            continue
        for line in text.splitlines():
            name, _, rest = line.partition(",")
            if name and os.path.normpath(os.path.join(site_dir, name)) == path:
                digest, _, size = rest.partition(",")
                return _Entry(dist_info, digest, int(size) if size.strip().isdigit() else None) \
                    if "=" in digest else None
    return None


def _normalise(name: str) -> str:
    """A project or module name as PEP 503 compares them (dist-info names use "_")."""
    return re.sub(r"[-_.]+", "_", name).lower()


INDEX = PackageIndex()


def package_of(processes: list[Process], index: PackageIndex = INDEX
               ) -> tuple[Package | None, dict | None]:
    """The distribution the offending processes come from, if they all do (a shell that
    started one may be among them); else None. Also why a program under a site folder was
    not counted, if one was not (for the evidence)."""
    offenders = [p for p in processes if not p.is_kernel]
    if not offenders or len(offenders) < len(processes):
        return None, None
    _lookup.deadline = time.monotonic() + LOOKUP_BUDGET
    try:
        return _package_of(offenders, index)
    finally:
        _lookup.deadline = None


def _package_of(offenders: list[Process], index: PackageIndex
                ) -> tuple[Package | None, dict | None]:
    found: dict[int, Package] = {}
    refused = None
    for p in offenders:
        try:
            package = program_package(p, index)
        except NotFromPackage as why:
            package, refused = None, refused or {"pid": p.pid, "reason": str(why)}
        if refused and refused["reason"].startswith(_OUT_OF_TIME):
            return None, refused
        if package is not None:
            found[p.pid] = package
    if not found:
        return None, refused
    shells = {p.pid for p in offenders if p.pid in _ancestors_of(found, offenders) and _is_shell(p)}
    if any(p.pid not in found and p.pid not in shells for p in offenders):
        return None, refused or {"reason": "other offending programs do not come from a package"}
    first = next(p for p in offenders if p.pid in found)
    return found[first.pid], None


def program_package(p: Process, index: PackageIndex = INDEX) -> Package | None:
    """The package of one process's program: its executable, or its Python script; and only
    if nothing of the user's can run inside it (see ``_refuse_users_code``). Never one that a
    loader runs (its options load what they name: ``ld.so --preload ./x.so /usr/bin/tool``)."""
    if EXE_LOADED in p.exe_markers:
        return None
    python = _INTERPRETER.match(os.path.basename(p.exe)) or \
        (not p.exe and p.cmdline and _INTERPRETER.match(os.path.basename(p.cmdline[0])))
    if python:
        options, script, arguments = _python_command(p)
        package = file_package(script, script, index) if script else None
    else:
        options, arguments = "", p.cmdline[1:]
        package = _executable_package(p, index)
    if package is not None:
        _refuse_users_code(p, package, python, options, arguments, index)
    return package


def _executable_package(p: Process, index: PackageIndex) -> Package | None:
    if not p.exe or not _same_process(p):
        return None
    proc_exe = f"/proc/{p.pid}/exe"
    try:
        running, on_disk = os.stat(proc_exe), os.stat(p.exe)
    except OSError:
        return None  # gone, or not ours to read (non-dumpable): fail safe
    if (running.st_dev, running.st_ino) != (on_disk.st_dev, on_disk.st_ino):
        if _now_running(proc_exe) not in (p.exe, None):
            return None  # it exec'd another program since the sample: the next sample judges it
        raise NotFromPackage(f"{p.exe} was replaced after the program started")
    return file_package(p.exe, proc_exe, index)


def _refuse_users_code(p: Process, package: Package, python: bool, options: str,
                       arguments: list[str], index: PackageIndex) -> None:
    """A package's program may still run the user's code: refused (NotFromPackage) when its
    environment loads code from where the user can write (LD_PRELOAD, PYTHONPATH, ...), when
    an argument names a file that is not the package's (a runner such as ``ipython x.py``),
    and for Python when the interpreter is the user's, when it reads code from stdin after
    the script (``-i``), or when the script or any Python file of the distribution changed
    after the install or after the program started (Python reads them once)."""
    environ = _environ(p)
    _refuse_loader_variables(environ)
    _refuse_users_libraries(p, package, hashed=not python, index=index)
    files = _distribution_files(package)
    if python:
        if _root_only(str(package.dist_info.parent)):
            # In an environment of the user's the interpreter is theirs too (docker-stacks'
            # /opt/conda, a venv --copies), and they could as well forge a distribution.
            _refuse_users_interpreter(p)
        _refuse_python_variables(environ, options)
        _refuse_startup_code(package.dist_info.parent, index)
        _refuse_user_site_code(p, environ, options, index)
        _refuse_changed_code(p, package, files, index)
    _refuse_file_arguments(p, package, arguments, files)


def file_package(path: str, content: str, index: PackageIndex = INDEX) -> Package | None:
    """The package that installed ``path`` (whose bytes are read from ``content``), or None."""
    real = os.path.realpath(path)
    sites, inside = _site_folders(Path(real))
    for site_dir in sites:
        entry = index.entry(site_dir, real)
        if entry is None:
            continue
        if not _hash_matches(content, entry.hash):
            raise NotFromPackage(f"{path} differs from what {entry.dist_info.name} installed "
                                 "(edited after the install)")
        if _installed_from_local_path(entry.dist_info):
            raise NotFromPackage(f"{entry.dist_info.name} was installed from a local path "
                                 "(direct_url.json file://): the user's own code")
        metadata = read_regular(entry.dist_info / "METADATA", MAX_METADATA)
        headers = HeaderParser().parsestr(metadata) if metadata else {}
        name, version = headers.get("Name"), headers.get("Version")
        if not name or not version:
            raise NotFromPackage(f"{entry.dist_info.name} has no readable name and version")
        return Package(str(name).strip(), str(version).strip(), path, entry.dist_info)
    if inside:
        raise NotFromPackage(f"{path} is under a site folder but no installed distribution "
                             "lists it with a hash")
    return None  # a program in an environment's bin/ that no distribution installed


def listed_unchanged(path: str, info: os.stat_result, since: float | None = None,
                     index: PackageIndex = INDEX) -> bool:
    """Whether a distribution of the file's environment installed ``path`` as it is now, told
    without reading it (torch's libraries are hundreds of MiB): its RECORD (or a conda
    environment's record, CondaIndex) lists it with a hash and ``info``'s size, and the file
    has not changed (its ctime, which no user can set back) since that RECORD was written (pip
    writes it last) or since ``since`` (a container image's files, unpacked in any order
    before its session began)."""
    real = os.path.realpath(path)
    try:
        for site_dir in _site_folders(Path(real))[0]:
            entry = index.entry(site_dir, real)
            if entry is not None and entry.size == info.st_size and (
                    info.st_ctime <= _ctime(entry.dist_info / "RECORD") or
                    (since is not None and info.st_ctime <= since)):
                return True
    except (NotFromPackage, OSError):
        pass
    return CONDA.listed_unchanged(real, info, since)


class CondaIndex:
    """The files conda installed in an environment, from its ``conda-meta/*.json`` records
    (``paths_data``: each file's path and size): a conda environment's libraries (``lib/``,
    torch's and CUDA's hundreds of MiB) are listed there, in no RECORD. Read as files, once
    per environment until ``conda-meta`` changes (an install or removal), bounded
    (CONDA_MAX_RECORDS of CONDA_MAX_RECORD bytes, SEARCH_BUDGET seconds): past a bound, none."""

    def __init__(self):
        self._lock = threading.Lock()
        self._listed: dict[Path, tuple[int, dict[str, tuple[int, float]]]] = {}

    def listed_unchanged(self, path: str, info: os.stat_result, since: float | None) -> bool:
        """Whether a conda record of the file's environment lists ``path`` with ``info``'s
        size, the file unchanged (its ctime) since that record was written (conda writes it
        once the package's files are linked) or since ``since``."""
        prefix = _conda_prefix(Path(path))
        if prefix is None:
            return False
        listed = self._records(prefix).get(os.path.relpath(path, prefix))
        return listed is not None and listed[0] == info.st_size and (
            info.st_ctime <= listed[1] or (since is not None and info.st_ctime <= since))

    def _records(self, prefix: Path) -> dict[str, tuple[int, float]]:
        try:
            stamp = os.stat(prefix / "conda-meta").st_mtime_ns
        except OSError:
            return {}
        with self._lock:
            cached = self._listed.get(prefix)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        listed = _conda_files(prefix / "conda-meta")
        with self._lock:
            if len(self._listed) >= 16:
                self._listed.clear()
            self._listed[prefix] = (stamp, listed)
        return listed


def _conda_prefix(path: Path) -> Path | None:
    """The conda environment holding ``path`` (the nearest folder above it with a
    ``conda-meta`` folder), or None."""
    for parent in list(path.parents)[:8]:
        if (parent / "conda-meta").is_dir():
            return parent
    return None


def _conda_files(meta: Path) -> dict[str, tuple[int, float]]:
    """Relative path -> (size, its record's ctime) for every file conda's records list."""
    listed: dict[str, tuple[int, float]] = {}
    deadline = time.monotonic() + SEARCH_BUDGET
    records = sorted(meta.glob("*.json"))
    if len(records) > CONDA_MAX_RECORDS:
        return {}
    for record in records:
        if time.monotonic() > deadline:
            return {}  # partial answers would differ from one try to the next: none
        text = read_regular(record, CONDA_MAX_RECORD)
        try:
            paths = json.loads(text)["paths_data"]["paths"] if text else []
            written = os.stat(record).st_ctime
        except (ValueError, KeyError, TypeError, OSError):
            continue
        for entry in paths if isinstance(paths, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("_path"), str) \
                    and isinstance(entry.get("size_in_bytes"), int):
                listed[os.path.normpath(entry["_path"])] = (entry["size_in_bytes"], written)
    return listed


CONDA_MAX_RECORDS = 4096  # packages of one conda environment
CONDA_MAX_RECORD = 32 * 2**20  # bytes of one conda-meta record (a large package's file list)
CONDA = CondaIndex()


def _site_folders(path: Path) -> tuple[list[Path], bool]:
    """The environment's site folders that may have installed ``path``, and whether the path
    lies inside one (else it may be a console script in the environment's ``bin``)."""
    for parent in path.parents:
        if parent.name in SITE_FOLDERS:
            if not _is_environment_site(parent):
                raise NotFromPackage(f"{parent} is not the site folder of a Python environment")
            return [parent], True
    if path.parent.name == "bin":  # a console script: <prefix>/bin/name
        prefix = path.parent.parent
        return [s for s in _prefix_sites(prefix) if _is_environment_site(s)], False
    return [], False


def _prefix_sites(prefix: Path) -> list[Path]:
    return [s for lib in ("lib", "lib64") for s in sorted((prefix / lib).glob("python*/*-packages"))
            if s.name in SITE_FOLDERS and s.is_dir()]


def _is_environment_site(site_dir: Path) -> bool:
    """``<prefix>/lib[64]/pythonX[.Y]/site-packages`` of a real environment."""
    if str(site_dir) in _own_sites():
        return True
    python, lib = site_dir.parent, site_dir.parent.parent
    if not _PYTHON_FOLDER.match(python.name) or lib.name not in ("lib", "lib64"):
        return False
    prefix = lib.parent
    return (prefix / "pyvenv.cfg").is_file() or prefix.name == ".local" or \
        any(prefix.glob("bin/python*"))


def _own_sites() -> set[str]:
    """The site folders of the interpreter the guard runs in (the system's, or the venv's)."""
    try:
        return {os.path.realpath(s) for s in site.getsitepackages()}
    except AttributeError:  # an old virtualenv's site module
        return set()


def _hash_matches(content: str, expected: str) -> bool:
    algorithm, _, encoded = expected.partition("=")
    if algorithm not in hashlib.algorithms_guaranteed or algorithm in ("md5", "sha1"):
        return False
    digest = hashlib.new(algorithm)
    try:
        with _open_regular(content, MAX_HASHED) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return False
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() == encoded


def _installed_from_local_path(dist_info: Path) -> bool:
    """pip's direct_url.json with a file:// URL; one that cannot be read counts as local."""
    path = dist_info / "direct_url.json"
    if not os.path.lexists(path):
        return False
    text = read_regular(path, MAX_METADATA)
    try:
        url = json.loads(text).get("url", "")
    except (TypeError, ValueError, AttributeError):
        return True  # unreadable provenance: not counted as a package's
    return not isinstance(url, str) or url.startswith("file:")


def read_regular(path: Path | str, limit: int) -> str | None:
    """A regular file's text, if it is one of at most ``limit`` bytes; else None."""
    try:
        with _open_regular(path, limit) as f:
            return f.read(limit + 1).decode("utf-8", "replace")
    except OSError:
        return None


def _open_regular(path: Path | str, limit: int):
    """Open without blocking (a named pipe would wait for a writer); refuse what is not a
    regular file of at most ``limit`` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise OSError(f"{path}: not a regular file of at most {limit} bytes")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _python_command(p: Process) -> tuple[str, str | None, list[str]]:
    """``python [options] x.py [arguments]``: the option letters, the script (absolute; None
    for ``-c``, ``-m``, stdin or an interactive interpreter) and its arguments."""
    args, letters = p.cmdline[1:], ""
    while args:
        arg = args.pop(0)
        if arg in _OPTIONS_WITH_VALUE:
            args = args[1:]
        elif arg.startswith(("-W", "-X", "--")):
            continue
        elif arg == "-" or arg.startswith("-") and ("c" in arg or "m" in arg):
            return letters, None, []  # code given inline, a module, or stdin
        elif arg.startswith("-"):
            letters += arg[1:]
        else:
            script = arg if os.path.isabs(arg) else _relative_to_cwd(p, arg)
            return letters, script, args
    return letters, None, []


def _script(p: Process) -> str | None:
    return _python_command(p)[1]


def _relative_to_cwd(p: Process, path: str) -> str | None:
    try:
        process = psutil.Process(p.pid)
        if abs(procfs.start_time(p.pid) - p.create_time) > 0.01:
            return None
        return os.path.join(process.cwd(), path)
    except (psutil.Error, OSError):
        return None


def _now_running(proc_exe: str) -> str | None:
    """The path of the program a process runs now (None when it cannot be read, and for a
    program deleted or replaced on disk since it started, which the kernel marks)."""
    try:
        path = os.readlink(proc_exe)
    except OSError:
        return None
    return None if path.endswith(" (deleted)") else path


def _same_process(p: Process) -> bool:
    """Still the process sampled (its pid not reused)."""
    try:
        return same_process(psutil.Process(p.pid), p.create_time)
    except psutil.Error:
        return False


def _ancestors_of(found: dict[int, Package], offenders: list[Process]) -> set[int]:
    """Offenders that started (directly or not) one of the packaged programs: a shell line."""
    parent = {p.pid: p.ppid for p in offenders}
    ancestors: set[int] = set()
    for pid in found:
        seen = set()
        while pid in parent and pid not in seen:
            seen.add(pid)
            pid = parent[pid]
            if pid in parent:
                ancestors.add(pid)
    return ancestors


# ------------------------------------------------------------ the user's code in a package's program

#: Variables that make the dynamic loader load code from the paths they name.
_LOADER_VARIABLES = ("LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH")
#: Variables that make Python import code from the paths they name (ignored under -E or -I).
_PYTHON_PATH_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE")
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "tcsh", "csh", "busybox"}
MAX_ENVIRON = 4 * 2**20  # bytes of /proc/PID/environ read
START_SLACK = 0.02  # seconds: a start time is known to the clock tick (10 ms)
MAX_VERIFIED = 512 * 2**20  # bytes of a distribution's Python files hashed at most
_CODE_SUFFIXES = (".py", ".so", ".pyd")
_MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd", ".pyw")


def _environ(p: Process) -> dict[str, str]:
    """The program's environment as it started (/proc/PID/environ); unreadable: refused."""
    try:
        with open(f"/proc/{p.pid}/environ", "rb") as f:
            data = f.read(MAX_ENVIRON + 1)
    except OSError:
        data = None
    if data is None or len(data) > MAX_ENVIRON or not _same_process(p):
        raise NotFromPackage("its environment cannot be read")
    pairs = (item.partition(b"=") for item in data.split(b"\0") if item)
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "surrogateescape")
            for k, _, v in pairs}


def _root_only(path: str) -> bool:
    """Neither ``path`` (or, if it does not exist, its nearest existing folder) nor any folder
    above it can be changed by anyone but root (a sticky folder such as /tmp allowed above)."""
    real = Path(os.path.realpath(path))
    while not os.path.lexists(real) and real != real.parent:
        real = real.parent
    for i, part in enumerate([real, *real.parents]):
        try:
            info = os.stat(part)
        except OSError:
            return False
        writable = info.st_mode & 0o022 and not (i and info.st_mode & stat.S_ISVTX)
        if info.st_uid != 0 or writable:
            return False
    return True


def _users_paths(value: str, separators: str = ":") -> list[str]:
    """The entries of a path list that someone other than root can change."""
    entries = re.split(f"[{re.escape(separators)}]", value)
    return [e for e in entries if e and "/" in e and not _root_only(e)] + \
        [e for e in entries if e and "/" not in e and e.startswith(".")]


def _refuse_loader_variables(environ: dict[str, str]) -> None:
    for name in _LOADER_VARIABLES:
        users = _users_paths(environ.get(name, ""), ": " if name == "LD_PRELOAD" else ":;")
        if users or (name == "LD_LIBRARY_PATH" and re.search(r"(^|:)(:|$)", environ.get(name, "x"))):
            raise NotFromPackage(f"{name} loads code from a place the user can change "
                                 f"({(users or ['the working folder'])[0]})")


def _refuse_users_libraries(p: Process, package: Package, hashed: bool,
                            index: PackageIndex) -> None:
    """Code mapped into the program from a file the user can change and that no distribution
    installed: a library of LD_PRELOAD whose constructor wiped the environment's text, or a
    library swapped in. A native program's libraries are hashed too; a Python program's only
    found in a RECORD (hashing every extension module it imported, torch's among them, would
    cost seconds)."""
    started = None
    for path in _mapped_code(p):
        _check_time()
        if path.endswith(" (deleted)"):
            raise NotFromPackage(f"it runs code from {path}, a file deleted since")
        if _root_only(path):
            continue
        try:
            info = os.stat(path)
        except OSError:
            raise NotFromPackage(f"it runs code from {path}, which cannot be read") from None
        started = started or _started_at(p)
        # ctime, not the inode /proc/PID/maps names: overlayfs (containers) shows another one
        if info.st_ctime > started + START_SLACK:
            raise NotFromPackage(f"it runs code from {path}, changed since it was loaded")
        if path == os.path.realpath(package.path):
            continue
        if not (_installed_by_any(path, index) if hashed else _listed_by_any(path, index)):
            raise NotFromPackage(f"it runs code from {path}, which no distribution installed "
                                 "(LD_PRELOAD, a library swapped in)")


def _mapped_code(p: Process) -> set[str]:
    """The files mapped executable into the process."""
    try:
        with open(f"/proc/{p.pid}/maps") as f:
            text = f.read(MAX_ENVIRON)
    except OSError:
        raise NotFromPackage("its memory map cannot be read") from None
    found = set()
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and "x" in fields[1] and fields[5].startswith("/"):
            found.add(fields[5])
    return found


def _listed_by_any(path: str, index: PackageIndex) -> bool:
    """Listed with a hash in a RECORD of its environment's site folder (not hashed now)."""
    try:
        sites, _ = _site_folders(Path(path))
        return any(index.entry(site_dir, path) is not None for site_dir in sites)
    except (NotFromPackage, OSError):
        return False


def _refuse_python_variables(environ: dict[str, str], options: str) -> None:
    if "i" in options or ("E" not in options and "I" not in options
                          and environ.get("PYTHONINSPECT")):
        raise NotFromPackage("Python reads more code from stdin after the script (-i, "
                             "PYTHONINSPECT)")
    if "E" in options or "I" in options:
        return  # the PYTHON* variables are ignored
    for name in _PYTHON_PATH_VARIABLES:
        users = _users_paths(environ.get(name, ""))
        if users or (name == "PYTHONPATH" and re.search(r"(^|:)(:|$)", environ.get(name, "x"))):
            raise NotFromPackage(f"{name} imports code from a place the user can change "
                                 f"({(users or ['the working folder'])[0]})")


def _refuse_user_site_code(p: Process, environ: dict[str, str], options: str,
                           index: PackageIndex) -> None:
    """Python runs the ``import`` lines of every ``.pth`` file, and ``usercustomize``, in the
    user's own site folder (``~/.local/lib/pythonX.Y/site-packages``) at every start, also
    for an honest script of an environment only root can change: any there that no
    distribution installed (as it installed it) is the user's code."""
    if "s" in options or "I" in options or (environ.get("PYTHONNOUSERSITE") and "E" not in options):
        return
    home = environ.get("HOME") or _home_of(p)
    version = _python_version(p)
    if not home or not version:
        return
    _refuse_startup_code(Path(home) / ".local" / "lib" / f"python{version}" / "site-packages",
                         index)


def _refuse_startup_code(site_dir: Path, index: PackageIndex) -> None:
    """Code in a site folder that Python runs at its start (``import`` lines of ``.pth``
    files, ``sitecustomize``, ``usercustomize``) that no distribution installed."""
    try:
        entries = list(os.scandir(site_dir))
    except OSError:
        return  # none (a venv without the user site does not read it either)
    for entry in entries:
        _check_time()
        code = entry.name in ("usercustomize.py", "sitecustomize.py") or \
            entry.name.endswith(".pth") and _runs_code(entry.path)
        if code and not _installed_by_any(os.path.realpath(entry.path), index):
            raise NotFromPackage(f"{entry.path} runs code at every start of Python and no "
                                 "distribution installed it")


def _runs_code(pth: str) -> bool:
    """A .pth file with a line Python executes (``import ...``), or one that cannot be read."""
    text = read_regular(pth, MAX_METADATA)
    return text is None or any(line.startswith(("import ", "import\t"))
                               for line in text.splitlines())


def _home_of(p: Process) -> str | None:
    try:
        import pwd

        return pwd.getpwuid(os.stat(f"/proc/{p.pid}").st_uid).pw_dir
    except (OSError, KeyError):
        return None


def _python_version(p: Process) -> str | None:
    """X.Y of the interpreter running ``p``, from the libpython or stdlib it has open or
    mapped, else from its executable's name (python3.11)."""
    try:
        with open(f"/proc/{p.pid}/maps") as f:
            found = re.search(r"/(?:libpython|python)(\d+\.\d+)", f.read(MAX_METADATA))
    except OSError:
        found = None
    if found:
        return found.group(1)
    named = re.search(r"python(\d+\.\d+)", os.path.realpath(f"/proc/{p.pid}/exe"))
    return named.group(1) if named else None


def _refuse_users_interpreter(p: Process) -> None:
    """An interpreter the user can change (a copy, a build of theirs named python3) runs
    whatever it likes besides the script."""
    try:
        exe = os.readlink(f"/proc/{p.pid}/exe")
    except OSError:
        raise NotFromPackage("its interpreter cannot be read") from None
    if not _root_only(exe):
        raise NotFromPackage(f"its interpreter {exe} is a file the user can change")


def _distribution_files(package: Package) -> dict[str, str | None]:
    """Every file the distribution's RECORD lists (absolute, normalised) and its hash."""
    site_dir = package.dist_info.parent
    text = read_regular(package.dist_info / "RECORD", MAX_RECORD) or ""
    files: dict[str, str | None] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(",")
        digest = rest.split(",", 1)[0]
        if name:
            files[os.path.normpath(os.path.join(site_dir, name))] = digest if "=" in digest else None
    return files


def _refuse_changed_code(p: Process, package: Package, files: dict[str, str | None],
                         index: PackageIndex) -> None:
    """The script, and every Python file of its distribution (the script may be a stub that
    imports them), as installed (RECORD's hashes) and unchanged since the program started
    (its ctime, which no user can set back: a file swapped back after Python read it); no
    compiled file (``__pycache__``, which Python prefers to a source of the same time and
    size) written after the install; nothing importable beside the script that the
    distribution did not install (the script's folder comes first on ``sys.path``)."""
    installed = _ctime(package.dist_info / "RECORD")
    code = {package.path: files.get(package.path),
            **{path: digest for path, digest in files.items()
               if path.endswith(_CODE_SUFFIXES) and digest is not None}}
    deadline, hashed, started = time.monotonic() + SEARCH_BUDGET, 0, _started_at(p)
    for path, digest in code.items():
        try:
            info = os.stat(path)
        except OSError:
            raise NotFromPackage(f"{path}, a file of {package.dist_info.name}, is missing") from None
        if info.st_ctime > started + START_SLACK:
            raise NotFromPackage(f"{path} changed after the program started")
        hashed += info.st_size
        _check_time()
        if hashed > MAX_VERIFIED or time.monotonic() > deadline:
            raise NotFromPackage(f"{package.dist_info.name} is too large to verify")
        if digest is not None and not _hash_matches(path, digest):
            raise NotFromPackage(f"{path} differs from what {package.dist_info.name} "
                                 "installed (edited after the install)")
    _refuse_late_bytecode(code, installed, package)
    _refuse_unlisted_beside(os.path.dirname(os.path.realpath(package.path)), files, package, index)


_OUT_OF_TIME = "the lookup took over"


def _check_time() -> None:
    """Within the whole lookup's LOOKUP_BUDGET (package_of), else NotFromPackage."""
    deadline = getattr(_lookup, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise NotFromPackage(f"{_OUT_OF_TIME} {LOOKUP_BUDGET:g} s")


def _refuse_late_bytecode(code: dict[str, str | None], installed: float, package: Package) -> None:
    caches: dict[str, list[os.DirEntry]] = {}
    for path in code:
        if not path.endswith(".py"):
            continue
        folder, stem = os.path.split(path)
        cache = os.path.join(folder, "__pycache__")
        if cache not in caches:
            try:
                caches[cache] = list(os.scandir(cache))
            except OSError:
                caches[cache] = []
        for entry in caches[cache]:
            if entry.name.startswith(stem[:-3] + ".") and \
                    entry.stat(follow_symlinks=False).st_ctime > installed + START_SLACK:
                raise NotFromPackage(f"{entry.path} was written after {package.dist_info.name} "
                                     "was installed (Python may run it instead of its source)")


def _refuse_unlisted_beside(folder: str, files: dict[str, str | None], package: Package,
                            index: PackageIndex) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        raise NotFromPackage(f"{folder} cannot be read") from None
    for entry in entries:
        _check_time()
        module = _module_file(entry)
        if module is None or module in files or _installed_by_any(module, index):
            continue
        raise NotFromPackage(f"{entry.path}, beside the program, was not installed by "
                             f"{package.dist_info.name} (it may be imported instead of the "
                             "package's own module)")


def _module_file(entry: os.DirEntry) -> str | None:
    """The file Python would import for this entry of a folder on sys.path (a module, or a
    package's __init__), or None (not importable)."""
    try:
        if entry.is_dir():  # a link to a folder too
            return next((os.path.realpath(os.path.join(entry.path, f"__init__{s}"))
                         for s in _MODULE_SUFFIXES if os.path.lexists(
                             os.path.join(entry.path, f"__init__{s}"))), None)
    except OSError:
        return entry.path
    return os.path.realpath(entry.path) if entry.name.endswith(_MODULE_SUFFIXES) else None


def _installed_by_any(path: str, index: PackageIndex) -> bool:
    """Another distribution's file, as it installed it (docutils puts rst2html.py in bin/)."""
    try:
        return file_package(path, path, index) is not None
    except NotFromPackage:
        return False


def _started_at(p: Process) -> float:
    """When the process started, to the clock tick (psutil's create_time rests on the boot
    time, which /proc gives to the second only)."""
    try:
        with open(f"/proc/{p.pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        raise NotFromPackage("its start time cannot be read") from None
    since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - since_start


def _ctime(path: Path) -> float:
    try:
        return os.stat(path).st_ctime
    except OSError:
        raise NotFromPackage(f"{path} cannot be read") from None


def _refuse_file_arguments(p: Process, package: Package, arguments: list[str],
                           files: dict[str, str | None]) -> None:
    """An argument naming a file that is not the distribution's as installed: an honest
    runner (ipython, coverage, a packaged interpreter) runs the user's script, or a program
    follows the user's configuration."""
    cwd = None
    for arg in arguments:  # all of them: 64 options before the user's file hide it no better
        _check_time()
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if not value or value.startswith("-"):
            continue
        if not os.path.isabs(value):
            cwd = cwd if cwd is not None else _cwd(p)
            value = os.path.join(cwd, value) if cwd else value
        if not os.path.exists(value):
            continue
        real = os.path.realpath(value)
        if real in files and (files[real] is None or _hash_matches(real, files[real])):
            continue
        raise NotFromPackage(f"its argument {value} is not a file of "
                             f"{package.dist_info.name}: the user's code or configuration")


def _cwd(p: Process) -> str | None:
    try:
        return os.readlink(f"/proc/{p.pid}/cwd")
    except OSError:
        return None


def _is_shell(p: Process) -> bool:
    """A system shell (root's file) holding no connection of its own: it only started the
    packaged program (``!pkg-tool ...`` in a notebook)."""
    try:
        exe = os.path.realpath(f"/proc/{p.pid}/exe")
    except OSError:
        return False
    return os.path.basename(exe) in _SHELLS and _root_only(exe) and not p.sockets \
        and _same_process(p)
