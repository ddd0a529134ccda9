"""What a script's code does, not what its text says (issue #17, precision).

A Python script is recognised by its code: the modules it imports, the names it calls and
defines, the protocol requests it builds. Not by comments, docstrings, or string constants
that are data: a cryptojacking detector's list of Stratum method names, an intrusion-detection
label list naming "DoS attacks-SlowHTTPTest", a docstring citing hashcat.net. A shell script is
searched without its comments. ``python app.zip`` (a zip app's ``__main__.py`` and the zip's
modules it imports), ``python x.pyc`` (its code objects, when compiled by this very Python)
and a PyInstaller program's archive (frozen.py: its entry scripts and the modules of its own
they import) are read as code too.

Parsing holds the GIL and cannot be interrupted (~0.2-0.5 s per MiB of source, far more on a
busy core), and a hostile script could exhaust memory or the C stack: so, but for a small
source (``IN_PROCESS_MAX``), it runs in a child process (``python -I -S -``, this file's
source on its stdin, the already opened script passed as a descriptor), bounded in time
(killed at the scan's deadline), memory and CPU, and as ``nobody`` when the guard is root.
This module is therefore standard library only.
"""

from __future__ import annotations

import ast
import io
import json
import keyword
import os
import re
import subprocess
import sys
import time
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field

try:
    from . import frozen
except ImportError:  # the isolated reader (this source on its stdin): given frozen.py's too
    frozen = sys.modules["colab_guard_frozen"]

PYTHON = "python"
SHELL = "shell"
OTHER = "other"  # node, perl, ruby, php...: their scripts are still searched as bytes
PTH = "pth"  # a site folder's .pth file: its ``import`` lines are Python that runs at start
FROZEN = "frozen"  # a PyInstaller program: the Python code its archive carries (frozen.py)

#: Bytes of a source that does not parse read as tokens (its import lines: all of it).
TOKENS_MAX = 128 << 10
#: Modules of a zip app read besides its ``__main__.py`` (those it imports), at most.
ZIP_MEMBERS_MAX = 32
#: Modules of a script's own folder that it imports (``import helper``: helper.py beside it,
#: first on its sys.path) read with it, at most this many, one level.
LOCAL_MODULES_MAX = 16


#: How deep a script's own modules are followed (main imports helper, which imports inner...).
LOCAL_MODULES_DEPTH = 4
#: Folders a script adds to its import path (constant ones) that its imports are looked for in.
PATH_FOLDERS_MAX = 4


def local_modules(script: str, imports: set[str], relative: set[str] = frozenset(),
                  module: str | None = None, runs: set[str] = frozenset(),
                  folders: set[str] = frozenset()) -> list[str]:
    """The files beside a script (or a .pyc) that its imports load: ``import helper`` is
    helper.py there, ``import pkg.mod`` pkg/mod.py or pkg/__init__.py, as Python would find
    them first on its path (the script's folder). ``relative``: the ``from .x import y`` of
    ``module`` (one of those files), found from its own folder; ``runs``: the files whose
    text it runs (``exec(open("x.py").read())``), from the script's folder too; ``folders``:
    those the code adds to its path (``sys.path.insert``, ``site.addsitedir``), searched
    after the script's own (relative ones from it)."""
    folder = os.path.dirname(script)
    found: list[str] = []
    searched = [folder] + [os.path.normpath(os.path.join(folder, f))
                           for f in sorted(folders)[:PATH_FOLDERS_MAX]]
    wanted = [(base, name) for name in sorted(imports) for base in searched]
    for path in sorted(runs)[:LOCAL_MODULES_MAX]:  # exec(open("x.py").read()): a file as is
        candidate = os.path.normpath(os.path.join(folder, path))
        if candidate not in found and os.path.isfile(candidate):
            found.append(candidate)
    if module is not None:
        wanted += [_relative_to(module, name) for name in sorted(relative)]
    resolved: set[str] = set()  # names found in a folder before the next (Python's first)
    for at, (base, name) in enumerate(wanted):
        absolute = at < len(imports) * len(searched)
        if base is None or not re.fullmatch(r"[A-Za-z_][\w.]*|", name) or \
                (absolute and name in resolved):
            continue
        path = os.path.join(base, *name.split(".")) if name else base
        for candidate in (path + ".py", os.path.join(path, "__init__.py")):
            if candidate not in found and os.path.isfile(candidate):
                found.append(candidate)
                resolved.add(name)
                break
        if len(found) >= LOCAL_MODULES_MAX:
            break
    return found


def _relative_to(module: str, name: str) -> tuple[str | None, str]:
    """``from ..x import y`` in ``module``: the folder the dots lead to, and ``x.y``."""
    level = len(name) - len(name.lstrip("."))
    folder = os.path.dirname(module)
    for _ in range(level - 1):
        folder = os.path.dirname(folder)
    rest = name[level:]
    return (folder if level <= LOCAL_MODULES_DEPTH else None), rest


#: The child's own limits.
CHILD_MEMORY = 1 << 30


@dataclass(frozen=True)
class CodeMarker:
    """A tool as a Python program shows it in code. It matches when the program imports
    every module in ``requires``, talks to the network if ``network``, and shows any of:
    an import of ``imports`` (or a submodule), one of the ``names`` as an identifier (a name,
    attribute, keyword argument, definition, dict key), a call of one of ``calls`` (dotted,
    after the program's own import aliases), a model file containing one of ``models`` given
    to a loader, a ``messages`` constant a message is built from, or ``need`` of the
    ``requests`` (RPC method names sent as requests)."""

    name: str
    imports: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    calls: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    requests: tuple[str, ...] = ()
    need: int = 1
    requires: tuple[str, ...] = ()
    network: bool = False


#: The tools a Python script can be (the names are content.MARKERS's). Every other marker is
#: a native tool's: in a Python script its strings are data (a log line, a label, a command
#: line it passes to the tool, which is itself scanned when it runs).
CODE_MARKERS: tuple[CodeMarker, ...] = (
    # A Stratum or getwork client: the method of a JSON-RPC request it builds ({"method": ...},
    # method=..., or JSON text), two of them, in a program that opens connections.
    CodeMarker("stratum-miner", requests=("mining.subscribe", "mining.authorize",
                                          "mining.submit", "mining.notify"),
               need=2, network=True),
    CodeMarker("getwork-miner", requests=("eth_submitWork", "eth_submitHashrate", "eth_getWork"),
               need=2, network=True),
    # A BitTorrent peer: its handshake built from the protocol string, and a connection.
    CodeMarker("bittorrent", messages=("BitTorrent protocol",), network=True),
    CodeMarker("pproxy", imports=("pproxy",)),
    # An SSH server: asyncssh imported, and host keys given to a server, or a server started.
    CodeMarker("asyncssh-server", requires=("asyncssh",), names=("server_host_keys",),
               calls=("asyncssh.listen", "asyncssh.create_server")),
    CodeMarker("face-swap", imports=("roop.processors.frame", "facefusion.processors"),
               names=("SAEHDModel",), models=("inswapper_",)),
)

#: The RPC method names of the markers above (a program's constants are looked up in them).
REQUEST_NAMES = frozenset(r for m in CODE_MARKERS for r in m.requests)

#: Calls (their last name) that open or use a connection.
NETWORK_CALLS = frozenset({
    "connect", "connect_ex", "create_connection", "open_connection", "urlopen", "ws_connect",
    "sendall", "sendto", "post", "HTTPConnection", "HTTPSConnection", "create_datagram_endpoint",
})
#: Calls (their last name) whose constant argument is a model file loaded.
MODEL_LOADERS = frozenset({"get_model", "InferenceSession"})
#: Calls (their last name) whose constant argument goes into a message.
MESSAGE_CALLS = frozenset({"pack", "pack_into", "send", "sendall", "sendto", "write"})
#: Calls that run code given as text (or a file's, by its path: run_path). Not compile()
#: alone: a linter compiles files it never runs (exec(compile(open(f)...)) is exec's).
RUN_CALLS = frozenset({"exec", "eval", "run_path", "execfile"})
#: Calls whose constant first argument is a file whose text is read (or run: run_path).
OPENERS = frozenset({"open", "Path", "read_text", "read_bytes", "run_path", "execfile"})
#: Calls that import the module named by their first argument.
IMPORT_CALLS = frozenset({"__import__", "import_module"})
#: Calls that add a folder (their last argument) to the import path: sys.path's, and site's
#: (which also runs the folder's .pth files).
PATH_CALLS = frozenset({"insert", "append", "addsitedir"})

#: A JSON-RPC request in a text constant: "method": "mining.subscribe".
_JSON_METHOD = re.compile(r"""["']method["']\s*:\s*["']([^"'\\]{1,200})["']""")


_SETS = ("imports", "names", "calls", "models", "messages", "requests", "mentioned", "relative",
         "runs", "folders", "site_dirs")


@dataclass
class Evidence:
    """What a Python program's code shows (see CodeMarker)."""

    imports: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    calls: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    messages: set[str] = field(default_factory=set)
    requests: set[str] = field(default_factory=set)
    network: bool = False
    # A request whose method is not a constant ({"method": method}, a loop over a table of
    # requests), and the known RPC method names among the program's string constants.
    variable_requests: bool = False
    mentioned: set[str] = field(default_factory=set)
    relative: set[str] = field(default_factory=set)  # from .x import y: ".x", ".x.y"
    runs: set[str] = field(default_factory=set)  # files it runs: exec(open("x").read())
    folders: set[str] = field(default_factory=set)  # sys.path.insert(0, "x"): imports from x
    site_dirs: set[str] = field(default_factory=set)  # site.addsitedir("x"): x's .pth files run

    def merge(self, other: "Evidence") -> None:
        for name in _SETS:
            getattr(self, name).update(getattr(other, name))
        self.network = self.network or other.network
        self.variable_requests = self.variable_requests or other.variable_requests

    def mention(self, text: str) -> None:
        if text in REQUEST_NAMES:
            self.mentioned.add(text)

    def to_json(self) -> dict:
        return {k: sorted(v) if isinstance(v, set) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict) -> "Evidence":
        evidence = cls(network=bool(data.get("network")),
                       variable_requests=bool(data.get("variable_requests")))
        for name in _SETS:
            getattr(evidence, name).update(str(v) for v in data.get(name, ()))
        return evidence


def code_markers(evidence: Evidence, markers: tuple[CodeMarker, ...] = CODE_MARKERS) -> list[str]:
    """The tools the evidence shows."""
    return [m.name for m in markers if _matches(m, evidence)]


def _imported(module: str, evidence: Evidence) -> bool:
    return any(i == module or i.startswith(module + ".") for i in evidence.imports)


def _matches(marker: CodeMarker, evidence: Evidence) -> bool:
    if not all(_imported(r, evidence) for r in marker.requires):
        return False
    if marker.network and not evidence.network:
        return False
    return (any(_imported(i, evidence) for i in marker.imports)
            or any(n in evidence.names for n in marker.names)
            or any(c in evidence.calls for c in marker.calls)
            or any(m in path for m in marker.models for path in evidence.models)
            or any(m in text for m in marker.messages for text in evidence.messages)
            or (bool(marker.requests)
                and sum(r in evidence.requests for r in marker.requests) >= marker.need)
            # Requests built from a table ({"method": method} in a loop over the names): the
            # names among its constants, and a request whose method is a variable.
            or (bool(marker.requests) and evidence.variable_requests
                and sum(r in evidence.mentioned for r in marker.requests) >= marker.need))


# ------------------------------------------------------------------ Python source


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ['a', 'b', 'c'] (None for anything else: a call's result, a subscript)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


#: Names a folded constant expression may go through (``A = B + "x"``), and its longest text.
FOLD_DEPTH = 8
FOLD_MAX = 4096
LOOP_VALUES = 64  # the constants of a loop a folded name takes, at most
#: Calls (their last name) that send a message on a connection (a request's data is in them).
SEND_CALLS = frozenset({"send", "sendall", "sendto"})
#: Calls (their last name) that send what they are given (a table of requests among it). Not
#: ``write``: a file's as much as a stream's (a detector writing its samples to a report).
TABLE_SENDS = SEND_CALLS | {"post", "request", "urlopen", "send_str", "send_json"}


def _fold(node: ast.AST, assigned: dict[str, ast.AST], depth: int) -> str | None:
    """The text a constant expression evaluates to, or None: what names bound to constants,
    ``+``, ``%s``, f-strings, ``sep.join([...])``, slices and ``.decode()`` make of constants
    (a name built from pieces is still that name). Never evaluates anything else."""
    if depth <= 0:
        return None
    text = _fold_node(node, assigned, depth - 1)
    return text if text is None or len(text) <= FOLD_MAX else None


def _fold_node(node: ast.AST, assigned: dict[str, ast.AST], depth: int) -> str | None:
    def fold(child: ast.AST) -> str | None:
        return _fold(child, assigned, depth)

    if isinstance(node, ast.Name):
        value = assigned.get(node.id)
        return fold(value) if value is not None else None
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else _fold_formatted(v, fold)
                       for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        texts = []  # 'm' + 'i' + 'n' + ...: a chain of any length is one level
        for operand in _operands(node):
            texts.append(fold(operand))
            if texts[-1] is None:
                return None
        return "".join(texts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _fold_percent(fold(node.left), node.right, fold)
    if isinstance(node, ast.Subscript):
        return _fold_subscript(fold(node.value), node.slice)
    if isinstance(node, ast.Call):
        return _fold_call(node, fold)
    return _text(node)


def _operands(node: ast.AST) -> list[ast.AST]:
    """The operands of a chain ``a + b + c`` (left to right; FOLD_MAX at most), or
    ``[left, right]`` of another operator."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)):
        return [node.left, node.right] if isinstance(node, ast.BinOp) else [node]
    operands = []
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and \
            len(operands) < FOLD_MAX:
        operands.append(node.right)
        node = node.left
    operands.append(node)
    return operands[::-1]


def _fold_formatted(value: ast.AST, fold) -> str:
    if isinstance(value, ast.FormattedValue) and value.conversion == -1 and \
            value.format_spec is None:
        text = fold(value.value)
        if text is not None:
            return text
    return "{}"  # a value not known here (as before folding: f"{DATA}/t-rex.jpg")


def _fold_percent(template: str | None, right: ast.AST, fold) -> str | None:
    """``"mining.%s" % x``: plain ``%s`` only (a width could build a huge text)."""
    if template is None or re.search(r"%[^s%]", template):
        return None
    values = [fold(e) for e in right.elts] if isinstance(right, ast.Tuple) else [fold(right)]
    if None in values or template.count("%s") != len(values):
        return None
    parts = template.replace("%%", "\0").split("%s")
    return "".join(p + v for p, v in zip(parts, values + [""])).replace("\0", "%")


def _fold_subscript(text: str | None, index: ast.AST) -> str | None:
    def number(node):
        if node is None:
            return None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = number(node.operand)
            return -value if isinstance(value, int) else False
        return node.value if isinstance(node, ast.Constant) and \
            type(node.value) is int else False

    if text is None:
        return None
    if isinstance(index, ast.Slice):
        bounds = [number(index.lower), number(index.upper), number(index.step)]
        return None if False in bounds or bounds[2] == 0 else text[slice(*bounds)]
    at = number(index)
    return text[at] if isinstance(at, int) and -len(text) <= at < len(text) else None


def _fold_call(node: ast.Call, fold) -> str | None:
    func = node.func
    if node.keywords or not isinstance(func, ast.Attribute):
        if isinstance(func, ast.Name) and len(node.args) == 1:
            if func.id == "str":
                return fold(node.args[0])
            if func.id in ("chr", "bytes", "bytearray"):  # chr(112), bytes([112, 112])
                return _fold_codes(node.args[0], func.id == "chr")
        return None
    if func.attr == "join" and len(node.args) == 1 and \
            isinstance(node.args[0], (ast.List, ast.Tuple)):
        separator, items = fold(func.value), [fold(e) for e in node.args[0].elts]
        return None if separator is None or None in items else separator.join(items)
    if func.attr == "fromhex" and isinstance(func.value, ast.Name) and \
            func.value.id == "bytes" and len(node.args) == 1:
        digits = fold(node.args[0])
        try:
            return bytes.fromhex(digits).decode("latin-1") if digits is not None else None
        except ValueError:
            return None
    if func.attr in ("decode", "encode", "lower", "upper", "strip") and \
            len(node.args) <= (1 if func.attr in ("decode", "encode") else 0):
        text = fold(func.value)
        return text if text is None or func.attr in ("decode", "encode") else \
            getattr(text, func.attr)()
    return None


def _fold_codes(node: ast.AST, single: bool) -> str | None:
    """``chr(112)``, ``bytes([112, 112, ...])``: characters from constant code points."""
    items = [node] if single else node.elts if isinstance(node, (ast.List, ast.Tuple)) else None
    if items is None or len(items) > FOLD_MAX:
        return None
    codes = [i.value for i in items if isinstance(i, ast.Constant) and type(i.value) is int]
    if len(codes) != len(items) or not all(0 <= c < (0x110000 if single else 256) for c in codes):
        return None
    return "".join(map(chr, codes))


def _through_getattr(func: ast.AST) -> ast.AST:
    """``getattr(importlib, "import_module")`` read as ``importlib.import_module``."""
    if isinstance(func, ast.Call) and isinstance(func.func, ast.Name) and \
            func.func.id == "getattr" and len(func.args) >= 2 and \
            isinstance(func.args[1], ast.Constant) and isinstance(func.args[1].value, str):
        return ast.Attribute(value=func.args[0], attr=func.args[1].value, ctx=ast.Load())
    return func


@dataclass(frozen=True)
class _Sender:
    """A function that sends some of its parameters as a request: ``def rpc(method, *p):
    sock.sendall(repr((method, p)).encode())`` or ``{"method": method}`` built in it."""

    parameters: tuple[str, ...]
    sent: tuple[str, ...]


def _sender(function: ast.FunctionDef | ast.AsyncFunctionDef) -> _Sender | None:
    """The parameters a function puts in a structure it sends on a connection (a tuple, list
    or dict given to ``send``/``sendall``/``sendto``, directly or through a name assigned in
    it) or in a request's ``"method"``. Not a text it sends (a detector's alert, "seen
    mining.subscribe", is no request), not what it writes to a file."""
    arguments = function.args
    parameters = tuple(a.arg for a in (*arguments.posonlyargs, *arguments.args,
                                       *arguments.kwonlyargs))
    if not parameters:
        return None
    local: dict[str, ast.AST] = {}
    sends: list[ast.AST] = []
    sent: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            local[node.targets[0].id] = node.value
        elif isinstance(node, ast.Call):
            parts = _dotted(node.func)
            if parts and parts[-1] in SEND_CALLS:
                sends += node.args
        elif isinstance(node, ast.Dict):
            sent.update(v.id for k, v in zip(node.keys, node.values)
                        if isinstance(k, ast.Constant) and k.value == "method" and
                        isinstance(v, ast.Name))
    for argument in sends:
        sent.update(_in_structures(argument, local))
    found = tuple(p for p in parameters if p in sent)
    return _Sender(parameters, found) if found else None


def _in_structures(node: ast.AST, local: dict[str, ast.AST], depth: int = 2) -> set[str]:
    """The names that are items of a tuple, list or dict within ``node`` (names assigned in
    the function followed ``depth`` times)."""
    found: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, (ast.Tuple, ast.List, ast.Set)):
            found.update(e.id for e in child.elts if isinstance(e, ast.Name))
        elif isinstance(child, ast.Dict):
            found.update(v.id for v in child.values if isinstance(v, ast.Name))
        elif isinstance(child, ast.Name) and depth > 0 and child.id in local:
            found |= _in_structures(local[child.id], local, depth - 1)
    return found


class _Reader:
    """One pass over a module's syntax tree (``ast.walk``: iterative, whatever the nesting)."""

    def __init__(self, tree: ast.AST):
        self.tree = tree
        self.evidence = Evidence()
        self.aliases: dict[str, str] = {}  # a name bound by an import -> the module path
        # NAME = <expression> (folded where NAME is used: NAME = "ppr" + "oxy")
        self.assigned: dict[str, ast.AST] = {}
        self.senders: dict[str, _Sender] = {}  # def rpc(method, ...): sends it in a request
        self.chained: set[int] = set()  # the inner links of ``a + b + c`` chains
        self.loops: dict[str, list[str]] = {}  # for x in ("a", "b"): the texts x takes
        # A table of requests (REQS = [{"method": "a"}, ...]): its dicts, by id, its name's
        # methods (counted once sent: a detector's samples are not requests), and the loop
        # names that walk it (for r in REQS)
        self.tabled: dict[int, str] = {}
        self.tables: dict[str, set[str]] = {}
        self.walks: dict[str, str] = {}
        self.table_sends: list[ast.Call] = []

    def read(self) -> Evidence:
        nodes = list(ast.walk(self.tree))
        for node in nodes:  # first what names mean: imports, constants, senders
            if isinstance(node, ast.Import):
                self._import(node)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node)
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    isinstance(node.targets[0], ast.Name):
                self.assigned[node.targets[0].id] = node.value
                if isinstance(node.value, (ast.List, ast.Tuple, ast.Set)):
                    self.tabled.update((id(e), node.targets[0].id) for e in node.value.elts
                                       if isinstance(e, ast.Dict))
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
                self.chained.add(id(node.left))  # a + b + c: read once, from its top
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) and \
                    isinstance(node.target, ast.Name) and \
                    isinstance(node.iter, (ast.List, ast.Tuple, ast.Set)):
                values = [_text(e) for e in node.iter.elts[:LOOP_VALUES]]
                if None not in values:  # for x in ("subscribe", "authorize"): x is each
                    self.loops[node.target.id] = values
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                sender = _sender(node)
                if sender is not None:
                    self.senders[node.name] = sender
            if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) and \
                    isinstance(node.target, ast.Name) and isinstance(node.iter, ast.Name):
                self.walks[node.target.id] = node.iter.id  # for r in REQS: r is one of them
        for node in nodes:
            self._node(node)
        for node in self.table_sends if self.tables else ():
            self._sent_tables(node)
        return self.evidence

    def _import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.evidence.imports.add(alias.name)
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                root = alias.name.split(".")[0]
                self.aliases[root] = root

    def _import_from(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            # The program's own modules (read where they are: a zip app's, a package's).
            base = "." * node.level + (node.module or "")
            self.evidence.relative.add(base)
            self.evidence.relative.update(f"{base}.{a.name}" if node.module else base + a.name
                                          for a in node.names if a.name != "*")
            return
        self.evidence.imports.add(node.module)
        for alias in node.names:
            if alias.name != "*":
                self.evidence.imports.add(f"{node.module}.{alias.name}")
                self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def _value(self, node: ast.AST) -> str | None:
        """The text a constant expression stands for, folded as Python would (names bound
        to one, ``+``, ``%s``, f-strings, ``"".join``, slices, ``.decode()``...)."""
        return _fold(node, self.assigned, FOLD_DEPTH)

    def _node(self, node: ast.AST) -> None:
        evidence = self.evidence
        if isinstance(node, ast.Name):
            evidence.names.add(node.id)
        elif isinstance(node, ast.Attribute):
            evidence.names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            evidence.names.add(node.name)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                key_text = self._value(key) if key is not None else None
                if key_text is None:
                    continue
                evidence.names.add(key_text)  # a dict of keyword arguments (**options)
                if key_text == "method" and id(node) in self.tabled:
                    table = self.tables.setdefault(self.tabled[id(node)], set())
                    table.add(self._value(value) or "")
                elif key_text == "method":
                    self._request(value)
        elif isinstance(node, ast.Call):
            self._call(node)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
            if id(node) in self.chained:
                return  # read with the chain it is part of
            for operand in [*_operands(node), node]:  # each, and what they make together
                self._message(operand)
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            text = _text(node)
            if text:
                evidence.mention(text)
            if text and "method" in text:
                evidence.requests.update(_JSON_METHOD.findall(text))

    def _request(self, node: ast.AST) -> None:
        looped = self._looped(node)
        if looped:  # f"mining.{x}" for x in (...): each turn's (an f-string folds anyway)
            self.evidence.requests.update(looped)
            return
        text = self._value(node)
        if text is not None:
            self.evidence.requests.add(text)
        elif not isinstance(node, ast.Constant):
            self.evidence.variable_requests = True  # {"method": name}: from a table

    def _looped(self, node: ast.AST) -> list[str]:
        """``"mining.%s" % x`` where x is a loop's over constants: the text of each turn."""
        name = next((n.id for n in ast.walk(node)
                     if isinstance(n, ast.Name) and n.id in self.loops), None)
        if name is None:
            return []
        texts = []
        for value in self.loops[name]:
            text = _fold(node, {**self.assigned, name: ast.Constant(value)}, FOLD_DEPTH)
            if text is not None:
                texts.append(text)
        return texts

    def _message(self, node: ast.AST) -> None:
        text = self._value(node)
        if text is not None:
            self.evidence.messages.add(text)

    def _call(self, node: ast.Call) -> None:
        evidence = self.evidence
        parts = _dotted(_through_getattr(node.func))
        last = parts[-1] if parts else None
        if last in self.senders:  # rpc("mining.subscribe"): a method its own sender sends
            self._sent_arguments(node, self.senders[last], method=len(parts) > 1)
        if parts:
            root = self.aliases.get(parts[0])
            evidence.calls.add(".".join(([root] if root else parts[:1]) + parts[1:]))
        for kw in node.keywords:
            if kw.arg:
                evidence.names.add(kw.arg)
                if kw.arg == "method":
                    self._request(kw.value)
        if last is None:
            return
        if last in NETWORK_CALLS:
            evidence.network = True
        if last in RUN_CALLS:
            self._runs(node)
        if last in PATH_CALLS and node.args and parts and self._on_sys_path(parts, last):
            folder = self._value(node.args[-1])
            if folder:
                evidence.folders.add(folder)
                if last == "addsitedir":
                    evidence.site_dirs.add(folder)
        if last in IMPORT_CALLS and node.args:
            module = self._value(node.args[0])
            if module:
                evidence.imports.add(module)
        if last in MODEL_LOADERS:
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                path = self._value(arg)
                if path is not None:
                    evidence.models.add(path)
        if last in MESSAGE_CALLS:
            for arg in node.args:
                self._message(arg)
        if last in TABLE_SENDS:
            self.table_sends.append(node)  # read once every table is known


    def _sent_tables(self, node: ast.Call) -> None:
        """A table of requests sent (``sock.sendall(json.dumps(REQS))``, or one of it walked
        by a loop): its methods are requests."""
        for argument in [*node.args, *(k.value for k in node.keywords)]:
            for name in ast.walk(argument):
                if isinstance(name, ast.Name):
                    table = self.tables.get(self.walks.get(name.id, name.id), set())
                    self.evidence.requests.update(t for t in table if t)

    def _on_sys_path(self, parts: list[str], last: str) -> bool:
        """``sys.path.insert``/``append`` or ``site.addsitedir`` (after the import aliases)."""
        name = ".".join([self.aliases.get(parts[0], parts[0])] + parts[1:])
        return name == "site.addsitedir" if last == "addsitedir" else name == f"sys.path.{last}"

    def _runs(self, node: ast.Call) -> None:
        """``exec(open("x.py").read())``, ``runpy.run_path("x.py")``: the file whose text it
        runs (the constant path given to an opener within its arguments)."""
        parts = _dotted(node.func) or [""]
        if parts[-1] in OPENERS and node.args:  # run_path("x"), execfile("x")
            path = self._value(node.args[0])
            if path:
                self.evidence.runs.add(path)
        for argument in node.args[:1]:
            if isinstance(argument, ast.Name) and argument.id in self.assigned:
                argument = self.assigned[argument.id]  # text = open(f).read(); exec(text)
            for inner in ast.walk(argument):
                opener = _dotted(inner.func) if isinstance(inner, ast.Call) else None
                if opener and opener[-1] in OPENERS and inner.args:
                    path = self._value(inner.args[0])
                    if path:
                        self.evidence.runs.add(path)

    def _sent_arguments(self, node: ast.Call, sender: "_Sender", method: bool) -> None:
        """The texts given to a sender's parameters that it sends in a request (a call
        through an attribute, ``self.rpc(...)``, skips a method's ``self``)."""
        names = sender.parameters
        if method and names[:1] == ("self",):
            names = names[1:]
        given = dict(zip(names, node.args))
        given.update((k.arg, k.value) for k in node.keywords if k.arg)
        for name in sender.sent:
            text = self._value(given[name]) if name in given else None
            if text is not None:
                self.evidence.requests.add(text)


def _text(node: ast.AST) -> str | None:
    """A str or bytes constant's text (bytes as Latin-1), an f-string's constant parts (its
    values as ``{}``); None for anything else."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return node.value
        if isinstance(node.value, bytes):
            return node.value.decode("latin-1")
        return None
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str)
                       else "{}" for v in node.values)
    return None


#: Where a top-level statement starts (a script cut at its byte bound is parsed up to there).
_TOP_LEVEL = re.compile(rb"\n(?=[A-Za-z_@])")
_TOP_IMPORT = re.compile(rb"^(?:import|from)[ \t][^\n]{1,400}", re.MULTILINE)


def python_evidence(source: bytes, cut: bool = False) -> Evidence:
    """What Python source shows as code. ``cut``: the source stops at a byte bound, mid-way
    (parsed up to its last top-level statement). Source that does not parse (a newer syntax,
    too deeply nested) is read as tokens, its first ``TOKENS_MAX`` bytes (Python's tokenizer
    takes a second or more per MiB): names and imports, never its strings or comments; and its
    top-level import lines throughout."""
    if cut:
        ends = [m.start() for m in _TOP_LEVEL.finditer(source)]
        evidence = python_evidence(source[:ends[-1] + 1]) if ends else \
            token_evidence(source[:TOKENS_MAX])
        evidence.merge(tail_imports(source))  # and the import lines of the statement cut
        return evidence
    try:
        tree = _parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError, SystemError):
        evidence = token_evidence(source[:TOKENS_MAX])
        evidence.merge(tail_imports(source))
        return evidence
    return _Reader(tree).read()


def _parse(source: bytes) -> ast.Module:
    """ast.parse, tried again once on a SystemError: CPython 3.11 keeps the depth of its AST
    conversion in state the threads share, and two parses at once (the two script threads, a
    cell's in the sampler's) can raise "AST constructor recursion depth mismatch" (seen in
    session 21: it failed the whole script's reading, which was then asked for again at every
    read). Failing twice, the source is read as one that does not parse (its tokens)."""
    try:
        return ast.parse(source)
    except SystemError:
        return ast.parse(source)


def token_evidence(source: bytes) -> Evidence:
    """The fallback for source that does not parse: its NAME tokens (names; ``import x`` and
    ``from x import``), ``"method": "x"`` and ``method="x"`` requests, network calls. Strings
    and comments are not names. Tokens are read as a stream (a few kept), whatever the size."""
    evidence = Evidence()
    last: list[tokenize.TokenInfo] = []  # the last three significant tokens
    importing: list[str] | None = None  # the dotted name after ``import``/``from``, so far
    from_import = plain_import = False  # that name came after ``from``; ``import`` alone
    try:
        for token in tokenize.tokenize(io.BytesIO(source).readline):
            if token.type in _INSIGNIFICANT:
                continue
            if importing is not None:
                if token.type == tokenize.NAME and not keyword.iskeyword(token.string) and \
                        (not importing or importing[-1] == "."):
                    importing.append(token.string)
                elif token.string == "." and importing and importing[-1] != ".":
                    importing.append(".")
                elif from_import and set(token.string) == {"."} and \
                        set("".join(importing)) <= {"."}:
                    importing.append(token.string)  # from .x import y: the program's own
                else:
                    module = "".join(importing).rstrip(".")
                    if module and not module.startswith("."):
                        evidence.imports.add(module)
                    importing = None
                    if from_import and token.string == "import":
                        if module and not module.startswith("."):  # a.b (b: a module?)
                            importing, from_import = [module, "."], False
                        last = (last + [token])[-3:]
                        continue
                    if token.string == "," and plain_import:
                        importing = []  # import a, b
                        continue
            if token.type == tokenize.NAME:
                evidence.names.add(token.string)
                if token.string in ("import", "from"):
                    importing, from_import = [], token.string == "from"
                    plain_import = token.string == "import"
            elif token.string == "(" and last and last[-1].type == tokenize.NAME and \
                    last[-1].string in NETWORK_CALLS:
                evidence.network = True
            elif token.type == tokenize.STRING and len(last) >= 2 and last[-1].string in ":=":
                key = last[-2]
                if (last[-1].string == ":" and key.type == tokenize.STRING and
                        _string_token(key.string) == "method") or \
                        (last[-1].string == "=" and key.string == "method"):
                    value = _string_token(token.string)
                    if value:
                        evidence.requests.add(value)
            last = (last + [token])[-3:]
    except (tokenize.TokenError, SyntaxError, ValueError, RecursionError, MemoryError):
        pass  # what was read up to there
    return evidence


_INSIGNIFICANT = frozenset({tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT,
                            tokenize.DEDENT, tokenize.ENCODING})


def _string_token(text: str) -> str | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else value \
        if isinstance(value, str) else None


#: A top-level import line: ``import a.b as c, d`` or ``from a.b import (c, d``.
_IMPORT_LINE = re.compile(rb"^(?:import[ \t]+([\w. \t,]+)|from[ \t]+([\w.]+)[ \t]+import[ \t]+"
                          rb"\(?([\w \t,]*))", re.MULTILINE)


def tail_imports(data: bytes) -> Evidence:
    """The modules of the top-level import lines in ``data`` (a regular expression: linear,
    whatever their number): the part of a script past what is parsed, or all of a script that
    could not be read in time."""
    evidence = Evidence()
    for match in _IMPORT_LINE.finditer(data):
        plain, module, names = (g.decode("latin-1") if g else "" for g in match.groups())
        for part in plain.split(","):
            words = part.split()
            if words:
                evidence.imports.add(words[0])
        if module and not module.startswith("."):
            evidence.imports.add(module)
            for part in names.split(","):
                words = part.split()
                if words:
                    evidence.imports.add(f"{module}.{words[0]}")
    return evidence


# ------------------------------------------------------------------ compiled and zipped


def pyc_evidence(data: bytes) -> Evidence | None:
    """What a ``.pyc`` compiled by this very Python shows as code: the modules its code
    imports (IMPORT_NAME, IMPORT_FROM; ``__import__``/``import_module`` of a constant), the
    names it uses (co_names), defines and passes as keywords, JSON-RPC requests in its
    constants. None: compiled by another Python (its code cannot be read here)."""
    import importlib.util

    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return None
    return code_evidence(data[16:])


def code_evidence(marshaled: bytes, depth: int = 0, decoding: list[int] | None = None
                  ) -> Evidence:
    """``pyc_evidence`` of marshaled code (compiled by this very Python): a .pyc's without its
    header, a frozen program's module; and the code its long constants hold, encoded, when
    it runs what it decodes. ``depth``: how many encoded stubs led here; ``decoding``: the
    bytes left to decode (``DECODED_ALL`` for the first)."""
    import marshal

    try:
        top = marshal.loads(marshaled)
    except (ValueError, EOFError, TypeError, MemoryError, RecursionError):
        return Evidence()
    evidence = Evidence()
    aliases: dict[str, str] = {}  # a name an import was stored under -> the module path
    texts: dict[str, set[str]] = {}  # a name -> the text constants stored in it
    blobs: list[bytes] = []  # long constants: code it may decode and run
    runs = False
    for code in _code_objects(top):
        evidence.names.update(code.co_names)
        evidence.names.add(code.co_name)
        runs = runs or _runs_decoded(code.co_names)
        _read_instructions(code, evidence, aliases, texts)
        for const in code.co_consts:
            if isinstance(const, tuple):  # a table of requests: (("mining.subscribe", ...), ...)
                for item in _flat(const):
                    evidence.mention(item)
            elif isinstance(const, (str, bytes)):
                text = const.decode("latin-1") if isinstance(const, bytes) else const
                evidence.mention(text)
                if "method" in text:
                    evidence.requests.update(_JSON_METHOD.findall(text))
                if len(const) >= BLOB_MIN and len(blobs) < 4 * BLOBS_MAX:
                    blobs.append(_as_bytes(const))
    if runs:  # exec(zlib.decompress(b64decode(b"...")))
        evidence.merge(_decoded_blobs(blobs, depth, decoding))
    return evidence


def _code_objects(top, most: int = 100_000):
    """A code object and those nested in its constants (functions, classes, comprehensions),
    ``most`` at most."""
    stack, seen = [top], 0
    while stack and seen < most:
        code = stack.pop()
        seen += 1
        if hasattr(code, "co_code"):
            yield code
            stack.extend(c for c in code.co_consts if hasattr(c, "co_code"))


def _decoded_blobs(blobs: list[bytes], depth: int, decoding: list[int] | None) -> Evidence:
    """The code the long constants of code that runs what it decodes hold (encoded)."""
    decoding = [DECODED_ALL] if decoding is None else decoding
    evidence = Evidence()
    if depth < STUB_DEPTH:
        blobs = sorted(blobs, key=lambda blob: b" " in blob)  # base64 and the like first
        for blob in blobs[:BLOBS_MAX]:
            evidence.merge(_decoded_code_evidence(blob, depth + 1, decoding))
    return evidence


#: A source that may run an encoded constant (a word that runs code, a run of 48 base64 or
#: hex characters: not a comment's line of "=", nor a long snake_case name): read in the
#: reader's child, where its constants are decoded (``_DECODES``).
_RUN_WORD = re.compile(rb"\b(?:exec|eval|loads)\b")
_ENCODED_RUN = re.compile(rb"[A-Za-z0-9+/]{48}")
_DECODES = False  # in the reader's child only: what is decoded may be marshaled code


def may_run_encoded(source: bytes) -> bool:
    return bool(_RUN_WORD.search(source)) and bool(_ENCODED_RUN.search(source))


def _compiled(text: bytes, name: str):
    """The code of a user's text, compiled (never run), or None; its warnings unsaid (a
    SyntaxWarning of a user's ``x is 1`` is no news to the guard's log)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return compile(text, name, "exec", dont_inherit=True)
        except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError):
            return None


def source_decoded_evidence(source: bytes) -> Evidence:
    """What a Python source's encoded constants hold, when its code runs what it decodes
    (``exec(zlib.decompress(b64decode(b"...")))``): its compiled code's long constants
    decoded as a .pyc's are (bounded alike). Its own code is read from its syntax tree."""
    top = _compiled(source, "<script>")
    if top is None:
        return Evidence()
    blobs: list[bytes] = []
    runs = False
    for code in _code_objects(top):
        runs = runs or _runs_decoded(code.co_names)
        blobs += [_as_bytes(c) for c in code.co_consts
                  if isinstance(c, (str, bytes)) and len(c) >= BLOB_MIN][:4 * BLOBS_MAX - len(blobs)]
    return _decoded_blobs(blobs, 0, None) if runs else Evidence()


def _as_bytes(constant: str | bytes) -> bytes:
    return constant.encode("latin-1", "replace") if isinstance(constant, str) else constant


#: Names of code that runs what it decodes: exec/eval of text, marshal.loads of code.
RUN_DECODED = RUN_CALLS | {"loads"}


def _runs_decoded(names) -> bool:
    """Whether code with these names may run what it decodes: exec, eval, or ``loads`` of
    ``marshal`` (``json.loads``, ``pickle.loads`` are everywhere, and run no code read)."""
    return not RUN_CALLS.isdisjoint(names) or "loads" in names and "marshal" in names
#: A constant that names a file (with an extension): one the code may run.
_FILE_NAME = re.compile(r"[\w\-./]{0,200}\.[A-Za-z0-9]{1,8}")
BLOB_MIN = 16  # a constant this long may be encoded code
BLOBS_MAX = 64  # constants of one module tried, at most
DECODED_ALL = 8 << 20  # bytes decoded for one .pyc or frozen program (its stubs', all layers)
STUB_DEPTH = 3  # stubs decoding stubs, at most
DECODE_LAYERS = 6  # encodings peeled off one constant, at most
DECODED_MAX = 1 << 20  # bytes one layer decodes to, at most
_BASE64 = re.compile(rb"[A-Za-z0-9+/\-_\s]+={0,2}\s*")
_HEX = re.compile(rb"(?:[0-9a-fA-F]{2}\s*)+")


def _decoded_code_evidence(blob: bytes, depth: int, decoding: list[int],
                           plain: bool = False) -> Evidence:
    """The code a constant holds under up to ``DECODE_LAYERS`` encodings (base64, base32,
    hex, zlib, gzip, bz2, lzma): marshaled code, or Python source. Nothing else is evaluated,
    every layer is bounded (a bomb gives its first ``DECODED_MAX`` bytes). ``plain``: source
    as it is counts too (a file the code runs); a constant's must have been encoded (rot13'd
    or reversed at least): a detector's sample of a miner's source, kept as text, is data."""
    import importlib.util

    data = blob
    for layer in range(DECODE_LAYERS):
        if data[:1] in (b"\xe3", b"c") and len(data) > 16:  # marshaled code (TYPE_CODE)
            return code_evidence(data, depth, decoding)
        if data[:4] == importlib.util.MAGIC_NUMBER:  # a .pyc's
            return code_evidence(data[16:], depth, decoding)
        if decoding[0] <= 0:
            return Evidence()
        decoded = _decode_once(data, min(DECODED_MAX, decoding[0]))
        decoding[0] -= len(decoded or b"")
        if decoded is None or b" " in data or b"\t" in data:  # (base64 has no spaces)
            found = _source_evidence(data, depth, decoding, plain or layer > 0)
            if found is not None or decoded is None:
                return found or Evidence()
        data = decoded
    return Evidence()


def _source_evidence(data: bytes, depth: int, decoding: list[int],
                     plain: bool = True) -> Evidence | None:
    """Decoded Python source, read as a script's and as its code (a stub in turn); text that
    does not compile is nothing (None: nor is it rot13'd or reversed). ``plain``: the text
    as it is is tried too."""
    import codecs
    import marshal

    variants = (codecs.encode(data.decode("latin-1"), "rot13").encode("latin-1"), data[::-1])
    for text in (data, *variants) if plain else variants:
        code = _compiled(text, "<decoded>")
        if code is None:
            continue
        if _only_literals(text):
            return None  # data that parses as Python (a JSON document): runs nothing
        evidence = python_evidence(text)
        evidence.merge(code_evidence(marshal.dumps(code), depth, decoding))
        return evidence
    return None


def _only_literals(text: bytes) -> bool:
    try:
        body = ast.parse(text).body
        return all(isinstance(n, ast.Expr) and ast.literal_eval(n.value) is not _NOTHING
                   for n in body)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return False


_NOTHING = object()


def _decode_once(data: bytes, limit: int) -> bytes | None:
    """One encoding taken off ``data``: by its header (compressed), or its alphabet."""
    import base64
    import binascii
    import bz2
    import lzma

    try:
        if data[:1] == b"\x78":
            return zlib.decompressobj().decompress(data, limit)
        if data[:2] == b"\x1f\x8b":
            return zlib.decompressobj(wbits=31).decompress(data, limit)
        if data[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(data, limit)
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor().decompress(data, limit)
        if _HEX.fullmatch(data):
            return bytes.fromhex(data.decode())
        if _BASE64.fullmatch(data):
            compact = re.sub(rb"\s+", b"", data)
            if b"-" in compact or b"_" in compact:
                return base64.urlsafe_b64decode(compact + b"=" * (-len(compact) % 4))
            return base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
    except (ValueError, zlib.error, OSError, EOFError, lzma.LZMAError, binascii.Error,
            MemoryError):
        return None
    for decode in (base64.b32decode, base64.b85decode):
        try:
            return decode(data)
        except (ValueError, binascii.Error):
            continue
    return None


#: Instructions that load a name (a callable, a module, an attribute).
_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_ATTR", "LOAD_METHOD", "LOAD_FAST",
                    "LOAD_DEREF"})
#: Instructions that take a tuple constant just before them as keyword or key names.
_KEYS = frozenset({"BUILD_CONST_KEY_MAP", "CALL_KW", "CALL_FUNCTION_KW"})


def _flat(constant: tuple, depth: int = 3):
    """The strings of a tuple constant and of the tuples in it (``depth`` levels)."""
    for item in constant[:10_000]:
        if isinstance(item, str):
            yield item
        elif isinstance(item, tuple) and depth > 1:
            yield from _flat(item, depth - 1)


def _read_instructions(code, evidence: Evidence, aliases: dict[str, str],
                       texts: dict[str, set[str]] | None = None) -> None:
    """A code object's imports (and the names they are stored under; ``import_module(NAME)``
    of a name a text constant is stored in, ``texts``: in the module's code read before), the
    modules' functions it uses (``asyncssh.listen``), keyword and key names, network calls,
    and requests built as ``{"method": "x"}`` (two constants in a row)."""
    texts = {} if texts is None else texts
    import dis

    imported = module = before = None
    instructions = list(dis.get_instructions(code))
    for at, instruction in enumerate(instructions):
        op, value = instruction.opname, instruction.argval
        if op in ("CACHE", "PUSH_NULL", "PRECALL", "NOP", "EXTENDED_ARG"):
            continue
        if op == "KW_NAMES":  # (3.11's dis does not resolve it)
            value = code.co_consts[instruction.arg]
            evidence.names.update(v for v in value if isinstance(v, str))
            if "method" in value:  # f(method="x"): the keyword values are the last arguments
                _request_at(instructions, at, len(value) - 1 - value.index("method"), evidence)
        if op == "BUILD_CONST_KEY_MAP" and before is not None and \
                isinstance(before.argval, tuple) and "method" in before.argval:
            keys = before.argval  # {"id": 1, "method": "x", ...}: its values are below the keys
            _request_at(instructions, instructions.index(before),
                        len(keys) - 1 - keys.index("method"), evidence)
        elif op == "IMPORT_NAME":
            imported = module = value
            evidence.imports.add(value)
        elif op == "IMPORT_FROM" and module is not None:
            imported = f"{module}.{value}"
            evidence.imports.add(imported)
        elif op.startswith("STORE_") and imported is not None:
            aliases[value] = imported if op != "STORE_ATTR" else aliases.get(value, value)
            imported = None
        elif op in ("STORE_NAME", "STORE_GLOBAL", "STORE_FAST", "STORE_DEREF") and \
                before is not None and before.opname == "LOAD_CONST" and \
                isinstance(before.argval, str) and len(texts.get(value, ())) < LOOP_VALUES:
            texts.setdefault(value, set()).add(before.argval)  # NAME = "pool_client"
        elif op in _LOADS:
            if op != "LOAD_ATTR" and value in texts and before is not None and \
                    before.opname in _LOADS and before.argval in IMPORT_CALLS:
                evidence.imports.update(texts[value])  # import_module(NAME)
            if value in NETWORK_CALLS:
                evidence.network = True
            if op in ("LOAD_ATTR", "LOAD_METHOD") and before is not None and \
                    before.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_FAST", "LOAD_DEREF"):
                evidence.calls.add(f"{aliases.get(before.argval, before.argval)}.{value}")
            elif value in aliases:
                evidence.calls.add(aliases[value])
        elif op in _KEYS and before is not None and before.opname == "LOAD_CONST" and \
                isinstance(before.argval, tuple):
            evidence.names.update(v for v in before.argval if isinstance(v, str))
        elif op == "LOAD_CONST" and isinstance(value, str) and before is not None:
            if before.opname in _LOADS and before.argval in IMPORT_CALLS:
                evidence.imports.add(value)  # __import__("x"), importlib.import_module("x")
            elif before.opname == "LOAD_CONST" and before.argval == "method":
                evidence.requests.add(value)
        if not op.startswith(("IMPORT_", "STORE_")) and op != "POP_TOP":
            imported = None if op != "IMPORT_NAME" else imported
        before = instruction


#: Instructions that push nothing (the others push at least one value).
_PUSH_NOTHING = ("PRECALL", "KW_NAMES", "CACHE", "NOP", "EXTENDED_ARG", "RESUME", "STORE_",
                 "POP_", "DELETE_", "JUMP", "RETURN", "RAISE", "SETUP", "LIST_", "SET_ADD",
                 "SET_UPDATE", "MAP_ADD", "DICT_", "PRINT_EXPR", "IMPORT_STAR")


def _request_at(instructions: list, at: int, depth: int, evidence: Evidence) -> None:
    """The constant that was ``depth`` values below the top of the stack just before
    instruction ``at``, if a LOAD_CONST of a str pushed it, as a request's method. Found by
    walking back over the stack effects (within 64 instructions: a dict or call being built)."""
    import dis

    for instruction in reversed(instructions[max(0, at - 64):at]):
        op = instruction.opname
        if op.startswith(("JUMP", "POP_JUMP", "FOR_ITER", "SEND")):
            return  # control flow: not one expression
        arg = instruction.arg if instruction.opcode >= dis.HAVE_ARGUMENT else None
        try:
            effect = dis.stack_effect(instruction.opcode, arg, jump=False)
        except ValueError:
            return
        pushed = 0 if op.startswith(_PUSH_NOTHING) else max(1, effect)
        if op == "LOAD_METHOD" or (op == "LOAD_GLOBAL" and (arg or 0) & 1):
            pushed = 2  # (3.11: with a NULL or the method's self)
        if depth < pushed:
            if op == "LOAD_CONST" and isinstance(instruction.argval, str):
                evidence.requests.add(instruction.argval)
            elif op != "LOAD_CONST":
                evidence.variable_requests = True  # {"method": name}: from a table
            return
        depth += (pushed - effect) - pushed


def zip_evidence(fileobj, parse_bytes: int) -> Evidence:
    """What a zip app runs: its ``__main__.py`` and the modules of the zip it imports, and
    those they import (``ZIP_MEMBERS_MAX`` at most), each read up to ``parse_bytes``
    decompressed."""
    evidence = Evidence()
    try:
        archive = zipfile.ZipFile(fileobj)
        members = {i.filename: i for i in archive.infolist()[:100_000]}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, MemoryError):
        return evidence
    main = _zip_source(archive, members, "__main__.py", parse_bytes)
    if main is None:
        return evidence
    evidence.merge(python_evidence(*main))
    waiting, seen, read = [m for m in _local_modules(main[0]) if m], set(), 0
    while waiting and read < ZIP_MEMBERS_MAX:  # what they import in turn (a package's modules)
        module = waiting.pop(0)
        if module in seen:
            continue
        seen.add(module)
        path = module.replace(".", "/")
        for name in (path + ".py", path + "/__init__.py"):
            found = _zip_source(archive, members, name, parse_bytes)
            if found is not None:
                read += 1
                evidence.merge(python_evidence(*found))
                package = module if name.endswith("__init__.py") else module.rpartition(".")[0]
                waiting += [m for m in _local_modules(found[0], package) if m and m not in seen]
                break
    return evidence


def _local_modules(source: bytes, package: str = "") -> list[str]:
    """The modules a source imports; relative ones (a zip app's own) from ``package``, the
    package the source is in ("": the zip's top)."""
    try:
        tree = _parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError, SystemError):
        return []
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([base] if base else []))
            modules += [base] + [f"{base}.{a.name}".lstrip(".") for a in node.names]
    return list(dict.fromkeys(modules))


def _zip_source(archive: zipfile.ZipFile, members: dict, name: str,
                limit: int) -> tuple[bytes, bool] | None:
    info = members.get(name)
    if info is None:
        return None
    try:
        with archive.open(info) as member:
            data = member.read(limit + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError,
            MemoryError):
        return None
    return data[:limit], len(data) > limit


# ------------------------------------------------------------------ frozen programs


#: Libraries a marker is about (asyncssh, pproxy, roop...): their own code is not read in a
#: frozen program (asyncssh's own modules give server host keys): the program's import of
#: them, and what its own code does with them, is what counts, as for a script.
MARKED_LIBRARIES = frozenset(name.split(".")[0] for m in CODE_MARKERS
                             for name in m.imports + m.requires)
#: Module names looked for in another Python's code (read as bytes), per module, at most.
NAMES_IN_BYTES = 4096
_IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_.]{0,200}")
_PRINTABLE = re.compile(rb"[\x20-\x7e\t\n]{4,}")


def frozen_answer(fd: int, parse_bytes: int) -> dict | None:
    """What a PyInstaller program's Python code shows (frozen.py): its entry scripts and the
    modules of its own it imports, read as code when this very Python (its version) built it
    ({"evidence": ...}), else their printable bytes ({"text": ...}: searched as bytes, as a
    .pyc of another Python is). None: not a PyInstaller program."""
    size = os.fstat(fd).st_size
    archive = frozen.find_archive(fd, size)
    if archive is None:
        return None
    if archive.python == sys.version_info[0] * 100 + sys.version_info[1]:
        evidence = Evidence()
        libraries: list[str] = []  # marked libraries the code imports: read last
        files: set[str] = set()  # constants naming a file, of code that runs one
        decoding = [DECODED_ALL]  # bytes its encoded constants may decode to, in all

        def read_code(name: str, data: bytes, package: str) -> list[str]:
            library = _library(name)
            if library is not None:
                strings = _marshaled_strings(data)
                if not _shows_other_markers(strings, library):  # (not disassembled: cost)
                    return _followed(_named_modules(strings), library)
            found = code_evidence(data, decoding=decoding)
            if not RUN_CALLS.isdisjoint(found.names):  # exec(open(join(_MEIPASS, "x.dat")))
                files.update(s for s in _marshaled_strings(data)
                             if isinstance(s, str) and _FILE_NAME.fullmatch(s))
            if library is not None:
                _drop_own_markers(found, library)
            evidence.merge(found)
            imports = found.imports | found.relative
            libraries.extend(m for m in sorted(imports) if _library(m) not in (None, library))
            return _followed(imports, library)

        frozen.read_program(fd, size, read_code, parse_bytes, shadowing=shadowing,
                            later=lambda: libraries)
        wanted = {os.path.basename(path) for path in files}
        for _, data in frozen.read_data(fd, size, wanted, parse_bytes):  # a payload it runs
            evidence.merge(_decoded_code_evidence(data, 1, decoding, plain=True))
        return {"evidence": evidence.to_json(), "frozen": True}
    texts: list[bytes] = []

    def read_bytes(name: str, data: bytes, package: str) -> list[str]:
        texts.append(b"\n".join(_PRINTABLE.findall(data)))
        names = dict.fromkeys(m.decode() for m in _IDENTIFIER.findall(data))
        return _followed(list(names)[:NAMES_IN_BYTES])

    frozen.read_program(fd, size, read_bytes, parse_bytes)
    return {"text": b"\n".join(texts)[:parse_bytes].decode("latin-1"), "frozen": True}


def _followed(modules, library: str | None = None) -> list[str]:
    """The imported modules of a frozen program read with it: its own, not the standard
    library (unless it is not the standard library's code: ``shadowing``) nor a library a
    marker is about (read last: ``_library``), but that ``library``'s own modules from its
    code. PyInstaller's loader (``pyimod01_archive``...) is not in the PYZ: a module of the
    PYZ named so is the program's own."""
    return sorted(m for m in modules
                  if m.lstrip(".") and m.lstrip(".").split(".")[0] not in sys.stdlib_module_names
                  and _library(m) in (None, library))


def _library(module: str) -> str | None:
    """The library a marker is about that an absolute module name is of (None: another)."""
    top = module.split(".")[0]
    return top if top in MARKED_LIBRARIES else None


def _marshaled_strings(data: bytes) -> frozenset:
    import marshal

    try:
        return _code_strings(marshal.loads(data))
    except (ValueError, EOFError, TypeError, MemoryError, RecursionError):
        return frozenset()


def _shows_other_markers(strings: frozenset, library: str) -> bool:
    """Whether a marked library's module has a name or text that a marker not about that
    library looks for (a request's method, a message, a model, a name, an import), or runs
    what it decodes: else its code is not disassembled (asyncssh's 50 modules: 0.4 s)."""
    words, texts = set(), []
    for marker in CODE_MARKERS:
        if library in {n.split(".")[0] for n in marker.imports + marker.requires}:
            continue
        words.update(marker.names)
        words.update(n.split(".")[0] for n in marker.imports + marker.requires + marker.calls)
        texts += [*marker.requests, *marker.messages, *marker.models]
    return not strings.isdisjoint(words) or _runs_decoded(strings) or any(
        t in s for s in strings if isinstance(s, str) for t in texts)


def _named_modules(strings: frozenset) -> list[str]:
    """The modules a code object may import, by its names: each as itself and relative to
    its package (``from .connection import x`` names ``connection``)."""
    names = [s for s in strings if isinstance(s, str) and s.replace(".", "_").isidentifier()]
    return names + ["." + n for n in names]


def _drop_own_markers(evidence: Evidence, library: str) -> None:
    """A marked library's own code, without what the markers about it look for: asyncssh's
    modules give server host keys, and are no SSH server; the program's own code, named as
    the library, still shows any other tool (a Stratum client) as read last."""
    for marker in CODE_MARKERS:
        if library not in {n.split(".")[0] for n in marker.imports + marker.requires}:
            continue
        evidence.names.difference_update(marker.names)
        evidence.calls.difference_update(marker.calls)
        evidence.imports = {i for i in evidence.imports if _library(i) != library}
        evidence.models = {p for p in evidence.models if not any(m in p for m in marker.models)}
        evidence.messages = {t for t in evidence.messages
                             if not any(m in t for m in marker.messages)}


#: Bytes of the guard's own copy of a standard module (its .pyc, else its source) read.
STANDARD_BYTES = 4 << 20
#: Standard modules without a .pyc compiled from their source, at most, in one child (some
#: 30 ms each): past them a module is taken for the library's own (the child's deadline).
STANDARD_COMPILES_MAX = 32
_STANDARD: dict[tuple[str, bool], frozenset | None] = {}
_COMPILED = [0]
UNCHECKED = frozenset({"(not compared)"})  # past STANDARD_COMPILES_MAX


def shadowing(name: str, marshaled: bytes, is_package: bool) -> bool:
    """Whether a frozen module named as one of the standard library's is not its code: names
    or text constants the guard's own copy of that module (the same Python version) does not
    have (the program's own ``this.py``, ``json/decoder.py`` changed). A module this
    Python's library lacks (``idlelib.x``) is not its code either."""
    import marshal

    reference = _standard_strings(name, is_package)
    if reference is None:
        return True
    if reference is UNCHECKED:
        return False
    try:
        code = marshal.loads(marshaled)
    except (ValueError, EOFError, TypeError, MemoryError, RecursionError):
        return False  # not code: nothing to read in it either
    return not _code_strings(code) <= reference


def _standard_strings(name: str, is_package: bool) -> frozenset | None:
    """The names and text constants of the guard's own copy of a standard module (cached):
    its cached .pyc, else its source compiled. None: it has none."""
    key = (name, is_package)
    if key not in _STANDARD:
        _STANDARD[key] = _read_standard(name, is_package)
    return _STANDARD[key]


def _read_standard(name: str, is_package: bool) -> frozenset | None:
    import importlib.util
    import marshal

    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    source = os.path.join(os.path.dirname(os.__file__), *parts)
    source = os.path.join(source, "__init__.py") if is_package else source + ".py"
    if not os.path.isfile(source):
        return None
    try:
        with open(importlib.util.cache_from_source(source), "rb") as f:
            data = f.read(STANDARD_BYTES)
        if data[:4] == importlib.util.MAGIC_NUMBER:
            return _code_strings(marshal.loads(data[16:]))
    except (OSError, ValueError, EOFError, TypeError, MemoryError, RecursionError):
        pass
    if _COMPILED[0] >= STANDARD_COMPILES_MAX:  # (a Python installed without its .pyc files)
        return UNCHECKED
    try:
        with open(source, "rb") as f:
            text = f.read(STANDARD_BYTES)
        _COMPILED[0] += 1
    except OSError:
        return None
    code = _compiled(text, source)
    return None if code is None else _code_strings(code)


def _code_strings(top) -> frozenset:
    """The names and text constants of a code object and those nested in it."""
    found: set = set()
    for code in _code_objects(top):
        found.update(code.co_names)
        found.add(code.co_name)
        for const in code.co_consts:
            if isinstance(const, (str, bytes)):
                found.add(const)
            elif isinstance(const, (tuple, frozenset)):
                found.update(_flat_constants(const))
    return frozenset(found)


def _flat_constants(constant, depth: int = 3):
    for item in list(constant)[:10_000]:
        if isinstance(item, (str, bytes)):
            yield item
        elif isinstance(item, (tuple, frozenset)) and depth > 1:
            yield from _flat_constants(item, depth - 1)


# ------------------------------------------------------------------ shell


#: A shell word that starts with ``#`` begins a comment (``$#``, ``${#x}``, ``a#b`` do not);
#: quoted text and escapes are skipped whole.
_SHELL = re.compile(rb"""'[^']*'?|"(?:\\.|[^"\\])*"?|\\.|"""
                    rb"""(?:(?<=[\s;&|()<>])|^)#[^\n]*|[^'"\\#]+|.""", re.DOTALL)


def shell_code(data: bytes) -> bytes:
    """A shell script without its comments."""
    return b"".join(m.group(0) for m in _SHELL.finditer(data)
                    if not m.group(0).startswith(b"#") or not _comment_start(data, m.start()))


def _comment_start(data: bytes, at: int) -> bool:
    return at == 0 or data[at - 1:at] in b" \t\n;&|()<>"


#: ``source x.sh`` / ``. ./x.sh`` as a command (after a line start, ``;``, ``&&``, ``|``...).
_SOURCE = re.compile(r"""(?:^|[;&|(]|\bthen|\bdo|\belse)[ \t]*(?:source|\.)[ \t]+"""
                     r"""(?:"([^"$`\n]{1,4096})"|'([^'\n]{1,4096})'|([^\s;&|<>()$`"']{1,4096}))""",
                     re.MULTILINE)
#: Files a shell script sources that are read with it (and theirs), at most.
SOURCED_MAX = 8


def sourced(code: str) -> list[str]:
    """The files a shell script (its code without comments) sources by a constant path."""
    found = []
    for match in _SOURCE.finditer(code):
        path = next(g for g in match.groups() if g is not None)
        if path not in found:
            found.append(path)
    return found[:SOURCED_MAX]


# ------------------------------------------------------------------ reading a script


def read_script(fd: int, language: str, parse_bytes: int, file_bytes: int) -> dict:
    """What the script open at ``fd`` shows: {"evidence": ...} for Python (a source, a zip
    app, with "zip": true, or a .pyc of this Python); {"code": text} for a shell script (its
    code without comments, as Latin-1); {"bytes": true}: to be searched as bytes (a .pyc of
    another Python). A PyInstaller program (``FROZEN``, or any ELF given as a script): its
    archive's code, ``frozen_answer``."""
    head = os.pread(fd, 16, 0)
    if language == SHELL:
        return {"code": shell_code(os.pread(fd, parse_bytes, 0)).decode("latin-1")}
    if language == FROZEN or head.startswith(b"\x7fELF"):
        answer = frozen_answer(fd, parse_bytes)
        if answer is not None or language == FROZEN:
            return answer or {"evidence": Evidence().to_json(), "frozen": True}
    if head.startswith(b"PK\x03\x04") or _is_zip(fd):
        with os.fdopen(os.dup(fd), "rb") as fileobj:
            return {"evidence": zip_evidence(fileobj, parse_bytes).to_json(), "zip": True}
    if _pyc(head):
        found = pyc_evidence(os.pread(fd, file_bytes, 0))
        return {"bytes": True} if found is None else {"evidence": found.to_json()}
    if language == PTH:
        data = pth_lines(fd, parse_bytes, file_bytes)
        evidence = python_evidence(pth_code(data))
        evidence.folders.update(pth_folders(data))
        return {"evidence": evidence.to_json()}
    source = os.pread(fd, parse_bytes + 1, 0)
    cut = len(source) > parse_bytes
    if cut:  # padded with comments? Those are skipped (up to file_bytes), then it may fit
        source, cut = code_lines(fd, parse_bytes, file_bytes)
    evidence = python_evidence(source[:parse_bytes], cut)
    if _DECODES and may_run_encoded(source[:parse_bytes]):
        evidence.merge(source_decoded_evidence(source[:parse_bytes]))
    if cut:
        evidence.merge(tail_imports(os.pread(fd, max(0, file_bytes - parse_bytes), parse_bytes)))
    return {"evidence": evidence.to_json()}


CODE_CHUNK = 1 << 20  # bytes of a long source read at a time to skip its comment lines
#: A line of a .pth file that may hold code: one with "import" in it (site runs only lines
#: that begin so; 3.13 splits at a form feed and the like too, so anywhere in the line).
_PTH_IMPORT_LINE = re.compile(rb"^[^\n]*import[^\n]*\n?", re.MULTILINE)


def pth_lines(fd: int, parse_bytes: int, file_bytes: int) -> bytes:
    """A .pth file's first ``parse_bytes``, and past them the lines that hold "import", read
    up to ``file_bytes``: site.py reads it whole, so an import line after a mebibyte of
    comments or folder lines still runs (at most ``parse_bytes`` of such lines)."""
    head = os.pread(fd, parse_bytes, 0)
    if len(head) < parse_bytes:
        return head
    at = head.rfind(b"\n") + 1 or parse_bytes
    kept, size, carry = [head[:at]], 0, b""
    while at < file_bytes and size < parse_bytes:
        chunk = os.pread(fd, min(CODE_CHUNK, file_bytes - at), at)
        if not chunk:
            break
        at += len(chunk)
        data = carry + chunk
        end = data.rfind(b"\n") + 1
        data, carry = data[:end], data[end:][-CODE_CHUNK:]
        for match in _PTH_IMPORT_LINE.finditer(data):
            kept.append(match.group(0))
            size += len(match.group(0))
    kept.append(carry if b"import" in carry else b"")
    return b"".join(kept)


def pth_code(data: bytes) -> bytes:
    """The code of a .pth file: its lines that begin ``import`` (site.py runs each; the others
    are folders added to the path). Split as Python up to 3.12 splits it (bytes at \\n and \\r)
    and as 3.13 does (decoded as utf-8-sig, ``str.splitlines``: a BOM, a form feed or \\x1c
    may begin a line there); the lines of both."""
    lines = data.splitlines()
    text = data.decode("utf-8-sig", "surrogateescape")
    lines += [line.encode("utf-8", "surrogateescape") for line in text.splitlines()]
    return b"\n".join(dict.fromkeys(line for line in lines
                                     if line.startswith((b"import ", b"import\t"))))


def pth_folders(data: bytes) -> list[str]:
    """The folders a .pth file adds to the path (its other lines, from its own folder: its
    imports and its siblings' are looked for there too), ``PATH_FOLDERS_MAX`` at most."""
    found = []
    lines = [line.decode("utf-8", "surrogateescape") for line in data.splitlines()]
    lines += data.decode("utf-8-sig", "surrogateescape").splitlines()  # as 3.13 reads it
    for line in dict.fromkeys(lines):
        text = line.rstrip()
        if text and not text.startswith(("#", "import ", "import\t")) and "\0" not in text:
            found.append(text)
    return found[:PATH_FOLDERS_MAX]


#: A blank line, or a comment line with no quote or backslash: removing it changes no code,
#: even within a triple-quoted string (only that string's text: its quotes are all kept).
_NOT_CODE = re.compile(rb"^[ \t\f\r]*(?:#[^\n'\"\\]*)?\n", re.MULTILINE)


def code_lines(fd: int, parse_bytes: int, file_bytes: int) -> tuple[bytes, bool]:
    """A source too long to parse whole without its blank and comment-only lines (a tool
    padded with a mebibyte of comments is still parsed), read in chunks up to ``file_bytes``;
    and whether what is left is still cut (more code than ``parse_bytes``, or a longer file).
    Its first two lines are kept as they are (a coding declaration)."""
    kept, size, at, carry = [], 0, 0, b""
    while at < file_bytes and size <= parse_bytes:
        chunk = os.pread(fd, min(CODE_CHUNK, file_bytes - at), at)
        if not chunk:
            return b"".join(kept) + carry, False
        at += len(chunk)
        data = carry + chunk
        end = data.rfind(b"\n") + 1
        if at == len(chunk):  # the first chunk: its first two lines untouched
            head = data.find(b"\n", data.find(b"\n") + 1) + 1
            kept.append(data[:head])
            data, end = data[head:], max(0, end - head)
        code = _NOT_CODE.sub(b"", data[:end])
        kept.append(code)
        size += len(code)
        carry = data[end:]
    source = b"".join(kept) + carry
    return source, len(source) > parse_bytes or at < os.fstat(fd).st_size


def _pyc(head: bytes) -> bool:
    """A .pyc's header: a 2-byte magic number (CPython 3: 3000 to 3999) and CR LF."""
    return len(head) == 16 and head[2:4] == b"\r\n" and \
        3000 <= int.from_bytes(head[:2], "little") < 4000


def _is_zip(fd: int) -> bool:
    """A zip app may start with anything (a shebang line): its end record says it is a zip."""
    with os.fdopen(os.dup(fd), "rb") as fileobj:
        try:
            return zipfile.is_zipfile(fileobj)
        except (OSError, ValueError):
            return False


#: A Python or shell source this small is read in the guard's own process (a parse of a few
#: milliseconds: a small script is known at once, without a child's start of 0.1 to 1 s). Not
#: before Python 3.11, whose parser turns absurd nesting into RecursionError, not a crash.
IN_PROCESS_MAX = 16 << 10


def read(fd: int, language: str, parse_bytes: int, file_bytes: int, deadline: float) -> dict:
    """``read_script``: here if the script is a small source, else in a child process
    (``read_isolated``). Zip apps, .pyc files and sources that may run an encoded constant
    always go to the child (decompression, and ``marshal``, which is not meant for hostile
    data)."""
    size = os.fstat(fd).st_size
    if size <= IN_PROCESS_MAX and sys.version_info >= (3, 11) and language != FROZEN and \
            (language == SHELL or _plain_source(fd, size)):
        return read_script(fd, language, parse_bytes, file_bytes)
    return read_isolated(fd, language, parse_bytes, file_bytes, deadline)


def _plain_source(fd: int, size: int) -> bool:
    """Whether a small Python file is a source that runs nothing it decodes: not a .pyc, an
    ELF (a frozen program, read by ``read_script`` as one), a zip app, nor a stub."""
    data = os.pread(fd, size, 0)
    return not (_pyc(data[:16]) or data.startswith(b"\x7fELF") or _is_zip(fd)
                or may_run_encoded(data))


_PROGRAM: bytes | None = None  # this file's source, given to the child on its stdin
NOBODY = 65534
_AS_NOBODY: bool | None = None  # whether the reader runs as nobody (None: not tried yet)
_NOBODY_ANSWERED = False  # a reader run as nobody has answered once (so it works here)


class ScriptReadFailed(Exception):
    """The child did not answer in time, or died (a script built to exhaust the parser)."""


def read_isolated(fd: int, language: str, parse_bytes: int, file_bytes: int,
                  deadline: float) -> dict:
    """``read_script`` in a child process, killed at ``deadline`` (time.monotonic());
    ScriptReadFailed if it did not answer."""
    global _PROGRAM, _NOBODY_ANSWERED
    if _PROGRAM is None:
        _PROGRAM = _child_program()
    seconds = max(0.05, deadline - time.monotonic())
    argv = [sys.executable, "-I", "-S", "-", str(fd), language, str(parse_bytes), str(file_bytes),
            str(int(seconds) + 1)]
    global _AS_NOBODY
    child, as_nobody = _start_child(argv, fd)
    try:
        out, _ = child.communicate(_PROGRAM, timeout=seconds)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise ScriptReadFailed(f"the script reader ran past its budget ({seconds:.2g} s)")
    if child.returncode != 0 and as_nobody and not _NOBODY_ANSWERED:
        _AS_NOBODY = False  # nobody may run this Python but not read its library: as ourselves
        return read_isolated(fd, language, parse_bytes, file_bytes, deadline)
    if child.returncode != 0:
        raise ScriptReadFailed(f"the script reader exited with {child.returncode}")
    try:
        answer = json.loads(out)
    except ValueError as err:
        raise ScriptReadFailed(f"the script reader answered nonsense: {err}") from err
    _NOBODY_ANSWERED = _NOBODY_ANSWERED or as_nobody
    return answer


def _child_program() -> bytes:
    """What the child runs: frozen.py's source as the module ``colab_guard_frozen``, then this
    file's as ``__main__`` (each compiled as a file of its own: its future imports hold)."""
    with open(__file__, encoding="utf-8") as f:
        own = f.read()
    with open(frozen.__file__, encoding="utf-8") as f:
        frozen_source = f.read()
    return (f"import sys, types\n"
            f"_frozen = types.ModuleType('colab_guard_frozen')\n"
            f"sys.modules['colab_guard_frozen'] = _frozen\n"
            f"exec(compile({frozen_source!r}, 'frozen.py', 'exec'), _frozen.__dict__)\n"
            f"del _frozen\n"
            f"exec(compile({own!r}, 'scripts.py', 'exec'))\n").encode("utf-8")


def _start_child(argv: list[str], fd: int) -> tuple[subprocess.Popen, bool]:
    """The reader, as ``nobody`` where the guard is root (it only gets the open script), or as
    the guard's own user where nobody may not run this Python (one installed under /root)."""
    global _AS_NOBODY
    options = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                   pass_fds=(fd,), close_fds=True)
    if _AS_NOBODY is None:
        _AS_NOBODY = os.geteuid() == 0
    if _AS_NOBODY:
        try:
            return subprocess.Popen(argv, user=NOBODY, group=NOBODY, extra_groups=[],
                                    **options), True
        except PermissionError:
            _AS_NOBODY = False
    try:
        return subprocess.Popen(argv, **options), False
    except OSError as err:
        raise ScriptReadFailed(f"could not start the script reader: {err}") from err


def _child(argv: list[str]) -> None:
    import resource

    global _DECODES
    fd, language, parse_bytes, file_bytes, seconds = argv
    _DECODES = True
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (int(seconds), int(seconds)))
    result = read_script(int(fd), language, int(parse_bytes), int(file_bytes))
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    _child(sys.argv[1:])
