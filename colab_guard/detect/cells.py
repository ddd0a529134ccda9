"""A cell's source as the cell signatures see it: comments gone, disguises undone.

The ``cell`` field is plain text, one finding per line:

    run: ./xmrig -o stratum+tcp://pool:3333     a program the cell starts
    hidden: stratum+tcp://pool:3333             a string built in a disguised way
    text: hello                                 any other string literal
    import: libtorrent                          a module the cell imports
    call: libtorrent.session                    a function or method the cell calls, by the
                                                dotted name its imports give it
    base: paramiko.ServerInterface              a class the cell's classes derive from

``run:`` comes from ``!`` lines, ``%%bash``/``%%sh``/``%%script`` cells, ``%system``,
``subprocess``, ``os.system``/``popen``/``exec*``/``spawn*``/``posix_spawn`` and ``pty.spawn``,
called by name or through whatever the cell keeps them in (see "runners kept aside").
``hidden:`` is a string the cell assembles (concatenation, ``chr()`` joins, f-strings,
slicing backwards, base64/base32/hex decoding, ``bytes([...])``), and any literal that
decodes as base64 or hex to readable text. Nothing is ever evaluated: the source is parsed
with ``ast`` and constant expressions are folded by hand, with bounded sizes.
"""

from __future__ import annotations

import ast
import base64
import builtins
import os
import binascii
import codecs
import copy
import operator
import re
import shlex
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache

from ..observe.model import Process
from . import commands as shell
from .form_branches import prune_form_branches
from .commands import Command
from .fields import FIELDS, Field

MAX_SOURCE = 256 * 1024  # characters of a cell that are checked
MAX_VALUE = 4096  # characters of one folded string
MAX_WORDS = 20_000  # words of earlier cells' string constants remembered (CellMemory.words)
MAX_LINES = 2000  # programs a cell starts
#: Levels of expression within one statement read as they are: the reader walks a tree by
#: recursion, and deeper (a sum of a thousand terms, a generated formula) is cut (_cut_deep);
#: brackets nest 200 levels at most, so lists or calls nested almost that deep are read whole.
MAX_DEPTH = 200
#: ... and in a call found in what was cut, read as a statement of its own, the calls nested
#: deeper than this in it: they are read on their own too (a chain of a thousand calls read
#: as a thousand short statements, not as ever deeper ones).
MAX_CUT_CALL_DEPTH = 24
#: The name a cut expression is read as: nothing the check knows.
CUT = "_colab_guard_cut_"
UNREAD_TOO_DEEP = ("its code is nested more deeply than the guard reads (an expression of "
                   "thousands of terms, which runs only once the recursion limit is raised). "
                   "Split the expression, or load the data from a file (json.load, "
                   "pandas.read_csv).")
#: Lines of the ``cell`` field: no count alone (a cell padded with thousands of distinct
#: constants must still have its code read to the end), but characters: ``text:`` lines
#: repeat the source's own literals (at most MAX_SOURCE), the others can be assembled far
#: longer than their source (``'A' * 4000``), so they have a budget of their own.
MAX_CODE_CHARS = 2 << 20
_GET_IPYTHON = {"get_ipython", "IPython.get_ipython", "IPython.core.getipython.get_ipython"}
IPYTHON = "get_ipython()"  # the alias of a name bound to the IPython shell
NAMESPACE = "globals()"  # the alias of a name bound to the cell's variables (g = globals())
#: a key of ``_Holders.held``: a runner went into the cell's variables under a name not known
#: (``globals().update(table)``), so any name the cell did not bind itself may be one
ANY_NAME = "*"
UNKNOWN = "…"  # a part of a command only known when it runs
#: a field of a ``%`` template (``%s``, ``%(port)d``, ``%-5s``) or an escaped ``%``
_PERCENT_FIELD = re.compile(r"%%|%(\([^)]{0,40}\))?[-#0 +]*[0-9*]{0,4}(\.[0-9*]{1,4})?"
                            r"[sdiouxXeEfFgGcra]")
#: a field of a ``.format`` template (``{}``, ``{port}``, ``{0:>4}``) or an escaped brace
_FORMAT_FIELD = re.compile(r"\{\{|\}\}|\{[^{}]{0,40}\}")
_TEMPLATE_ESCAPES = {"%%": "%", "{{": "{", "}}": "}", "$$": "$"}
#: a field of a ``string.Template`` (``$port``, ``${port}``) or an escaped ``$``
_DOLLAR_FIELD = re.compile(r"\$\$|\$(\{[_a-zA-Z][_a-zA-Z0-9]{0,40}\}|[_a-zA-Z][_a-zA-Z0-9]{0,40})")
#: steps one reading of a command with unknown parts may take (a template handed through
#: helpers that call helpers is read within it; past it, the rest is unknown)
MAX_LOOSE_STEPS = 64
MAX_LOOSE_INLINED = 8  # helpers' calls read through, in one reading
MAX_ADDED = 4096  # operands of one ``+`` sum read as texts (the rest visited whole)

_RUN_CALLS = {
    "subprocess.Popen", "subprocess.run", "subprocess.call", "subprocess.check_call",
    "subprocess.check_output", "subprocess.getoutput", "subprocess.getstatusoutput",
    "os.system", "os.popen", "os.posix_spawn", "os.posix_spawnp", "pty.spawn",
    "asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell",
    # the same through other libraries
    "IPython.utils.process.system", "IPython.utils.process.getoutput",
    "IPython.utils.process.getoutputerror", "IPython.utils.process.get_output_error_code",
    "pexpect.spawn", "pexpect.run", "pexpect.spawnu", "pexpect.popen_spawn.PopenSpawn",
    "pexpect.pty_spawn.spawn", "ptyprocess.PtyProcess.spawn", "ptyprocess.PtyProcessUnicode.spawn",
    "invoke.run", "fabric.Connection.local", "sh.Command", "plumbum.local.__getitem__",
}
_RUN_NAMES = {f"os.{n}" for n in ("execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp",
                                   "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl",
                                   "spawnle", "spawnlp", "spawnlpe")}
_PY_DOWNLOADS = {"urllib.request.urlretrieve", "urllib.request.urlopen", "requests.get",
                 "requests.request", "httpx.get", "wget.download", "gdown.download",
                 "urllib.urlretrieve", "huggingface_hub.hf_hub_download", "torch.hub.download_url_to_file"}
_SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                "asyncio.create_subprocess_shell", "commands.getoutput",
                "IPython.utils.process.system", "IPython.utils.process.getoutput",
                "IPython.utils.process.getoutputerror", "IPython.utils.process.get_output_error_code",
                "pexpect.run", "invoke.run"}
# callables handed another function to run with arguments: Process(target=os.system,
# args=(cmd,)), executor.submit(os.system, cmd), functools.partial(os.system, cmd), map(os.system, …)
_HANDED_OVER = ("submit", "apply", "apply_async", "run_in_executor", "partial", "call_soon",
                "start_new_thread", "Process", "Thread", "Timer", "map", "starmap", "imap",
                "imap_unordered", "map_async", "to_thread", "call",
                # atexit.register, ExitStack.callback, weakref.finalize(obj, f, *args)
                "register", "callback", "finalize",
                # sorted(cmds, key=os.system): each item handed to the key
                "sorted", "min", "max")
_KEYED = ("sorted", "min", "max")
# loads of a pickle (its opcodes are read for the callables it calls, never run)
_UNPICKLERS = {"pickle.loads", "_pickle.loads", "cPickle.loads", "pickle._loads", "dill.loads",
               "cloudpickle.loads", "joblib.loads"}
#: loads of a pickle from a stream: read when the stream is ``io.BytesIO(constant)``
#: (``pickle.load``, ``pickle.Unpickler(…).load()``, and libraries that unpickle what they load)
_STREAM_UNPICKLERS = {"pickle.load", "_pickle.load", "cPickle.load", "dill.load",
                      "cloudpickle.load", "joblib.load", "torch.load", "numpy.load",
                      "pandas.read_pickle", "pickle.Unpickler", "_pickle.Unpickler"}
_STREAMS = {"io.BytesIO", "io.StringIO", "_io.BytesIO"}
MAX_PICKLE_OPS = MAX_SOURCE  # an op is a byte at least: a pickle is read to its end (0.3 s)
#: characters the arguments of a cell's unpickler and unmarshaller calls may be folded to,
#: all together (a pickle assembled past MAX_VALUE, ``b'N0' * 3000 + payload``, is still read;
#: the budget keeps thousands of such calls from costing more than one long one)
MAX_LONG_FOLDING = MAX_SOURCE
#: the longest string one fold builds (raised only while such an argument is folded)
_VALUE_LIMIT: ContextVar[int] = ContextVar("value_limit", default=MAX_VALUE)
_RUN_PREFIXES = ("os.exec", "os.spawn")
_CODE_MAGICS = {"capture", "time", "timeit", "prun", "debug", "python", "python3"}
MAX_NESTING = 3  # exec of decoded code inside exec of decoded code ...
MAX_NAMES = 512  # variables one kernel's memory keeps
MAX_FILES = 16  # %%writefile scripts one kernel's memory keeps
MAX_GENERATORS = 64  # generator functions one kernel's memory keeps (their trees)
_SHELL_MAGICS = {"bash", "sh", "script", "system", "sx"}
#: interpreters whose cells are read for the commands they run: system("…"), `…`, exec("…"),
#: execSync("…"), spawn("…"), qx(…)
_SCRIPT_MAGICS = {"perl", "ruby", "node"}
_SCRIPT_RUNS = re.compile(
    r"""\b(?:system|exec|execSync|spawn|spawnSync|popen|qx)\s*\(\s*(?:'([^'\n]{1,4096})'|"([^"\n]{1,4096})")""")
_SHELL = re.compile(r"^(\S*/)?(ba|da|z|k|a)?sh$")
_BIG_WIDTH = re.compile(r"[0-9]{4,}|\*")  # %99999s, {:>99999}: no huge strings
#: what separates the words of an assembled string: a path's folders and a file's extension
#: are words (a folder or file per class or malware family named in a plain list hides no
#: name); a URL's scheme is not cut from its host (stratum+tcp:// + a host is assembled),
#: nor a dotted name from its last part ('mining.' + 'authorize')
_WORDS = re.compile(r"[\s,;|'\"()\[\]{}]+|(?<![:/])/+|\.(?=[A-Za-z0-9]{1,4}(?:$|[\s,;|'\"()\[\]{}/]))")
_B64 = re.compile(r"^[A-Za-z0-9+/_-]{16,}={0,2}$")
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2}){8,}$")


@dataclass
class CellProcess(Process):
    """The kernel as a cell check sees it: only the cell's source is known."""

    cell: str = ""
    #: the ``cell`` field when the engine has already read the cell with its kernel's
    #: memory of earlier cells (None: read the source alone)
    normalised: str | None = None
    #: why the engine could not read the cell at all (CellAnalysis.unread), or ""
    unread: str = ""


CELL_FIELD = "cell"


@dataclass
class CellAnalysis:
    """What a cell would do, read without running it."""

    text: str  # the ``cell`` field: run:/hidden:/text:/import:/call: lines
    commands: list[Command]  # every program it would start, with the folder it starts in
    #: why the cell could not be read at all (then it is refused), or ""
    unread: str = ""


class CellMemory:
    """What one kernel's earlier cells left behind that a later cell can use: variables
    assigned constants, imports, the working folder (``%cd``), repositories cloned (folder ->
    repository name) and scripts written with ``%%writefile``. Bounded."""

    def __init__(self):
        self.names: dict[str, _Folded] = {}
        self.aliases: dict[str, str] = {}
        self.cwd: str | None = None
        self.clones: dict[str, str] = {}
        self.files: dict[str, str] = {}
        self.runners: dict[str, int] = {}
        self.generators: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}  # by name
        self.holders = _Holders()  # names that may hold a runner (see _Holders)
        self.renames: dict[str, str] = {}  # mv xmrig kworker: kworker -> xmrig
        #: a cell could rebind names unseen by a later cell's text (form_branches)
        self.rebinds_unseen = False
        #: the words of the string constants earlier cells spelled out (see _Reader._plain):
        #: a name one cell lists plainly and a later one slices out of a path hides nothing
        self.words: set[str] = set()
        #: the kernel's working folder on disk (``/proc/PID/cwd``, set by the channel before a
        #: check), where a glob in a program's place is resolved as the shell would; None: not
        #: known (the glob stays as written)
        self.folder: str | None = None
        self._last: tuple[str, CellAnalysis] | None = None

    def analyse(self, source: str) -> CellAnalysis:
        """Read a cell in the light of the earlier ones, then remember what it leaves. The
        same source twice in a row is read once (a check repeated is not a cell run twice)."""
        source = (source or "")[:MAX_SOURCE]
        if self._last is not None and self._last[0] == source:
            return self._last[1]
        analysis = _analyse(source, self)
        self._last = (source, analysis)
        return analysis

    def remember_words(self, literals: str) -> None:
        words = {w for literal in literals.split("\0") for w in _WORDS.split(literal)
                 if w and not w.isdigit()}
        if len(self.words) + len(words) > MAX_WORDS:
            self.words = set()  # the oldest cells' words forgotten first, roughly
        self.words |= set(list(words)[:MAX_WORDS])

    def _trim(self) -> None:
        for table, limit in ((self.names, MAX_NAMES), (self.aliases, MAX_NAMES),
                             (self.clones, MAX_NAMES), (self.files, MAX_FILES),
                             (self.runners, MAX_NAMES), (self.renames, MAX_NAMES),
                             (self.generators, MAX_GENERATORS)):
            while len(table) > limit:
                table.pop(next(iter(table)))


def analyse_cell(source: str, memory: CellMemory | None = None) -> CellAnalysis:
    """The normalised text of a cell and the programs it would start (pure: ``memory`` is
    read and updated, nothing else)."""
    if memory is not None:
        return memory.analyse(source)
    return _analyse((source or "")[:MAX_SOURCE], None)


def _analyse(source: str, memory: CellMemory | None) -> CellAnalysis:
    if not source.strip():
        return CellAnalysis("", [])
    try:
        tree = _parse(source)
    except TooDeep:
        return CellAnalysis("", [], unread=UNREAD_TOO_DEEP)
    if tree is None:
        return CellAnalysis("", [])
    _cut_deep(tree)
    prune_form_branches(tree, source, memory)  # what the form's values in the text rule out never runs
    reader = _Reader(memory)
    reader.literals = _literals(tree)
    reader.earlier_words = memory.words if memory is not None else set()
    reader.previous = _previous_statements(tree)
    reader.find_runners(tree)
    _read_statements(reader, tree, cut=False)
    if memory is not None:
        memory.names, memory.aliases, memory.cwd = reader.names, reader.aliases, reader.cwd
        memory.runners = reader.runners
        memory.generators = reader.generators
        memory.holders = reader.holders.trimmed(MAX_NAMES)
        memory.remember_words(reader.literals)
        memory._trim()
    return CellAnalysis("\n".join(reader.lines), reader.commands[:MAX_LINES], unread=reader.unread)


def _read_statements(reader: _Reader, tree: ast.Module, cut: bool = True) -> None:
    """Read a cell's statements (or those of code it runs from a string) one by one, their
    expressions cut past MAX_DEPTH (_cut_deep, unless done already)."""
    if cut:
        _cut_deep(tree)
    for statement in tree.body:
        try:
            reader.visit(statement)
        except RecursionError:  # blocks of code run from strings run from blocks …: nested
            reader.unread = UNREAD_TOO_DEEP  # past what the reader holds, refused (read in
            return  # pieces instead, each piece failing anew, it took seconds a statement)
        except Exception:  # a reading bug in one statement must not hide the others,
            _read_piecewise(reader, statement)  # nor the programs it starts


def normalise_cell(source: str) -> str:
    """The ``cell`` field's text for a cell's raw source (IPython syntax allowed)."""
    if not source or not source.strip():
        return ""
    return _normalise(source[:MAX_SOURCE])


@lru_cache(maxsize=256)
def _normalise(source: str) -> str:
    return _analyse(source, None).text


_ESCAPED = re.compile(r"^([ \t]*)(!!?|%(?!%))(.*)$")
MAX_IPYTHON_ESCAPES = 64  # more `!`/`%` lines than this: converted here (IPython's is quadratic)


def _fast_escapes(source: str) -> str | None:
    """IPython's transforms re-tokenise the whole cell once per escaped line (minutes for a
    hostile cell of thousands of `!` lines). Past MAX_IPYTHON_ESCAPES such lines, convert them
    here, line by line (a line inside a triple-quoted string may then read as a command: the
    cell is hostile anyway)."""
    lines = source.split("\n")
    if source.lstrip().startswith("%%") or \
            sum(1 for line in lines if _ESCAPED.match(line)) <= MAX_IPYTHON_ESCAPES:
        return None
    out = []
    for line in lines:
        match = _ESCAPED.match(line)
        if not match:
            out.append(line)
            continue
        indent, escape, rest = match.groups()
        if escape.startswith("!"):
            out.append(f"{indent}get_ipython().system({rest!r})")
        else:
            name, _, arg = rest.partition(" ")
            out.append(f"{indent}get_ipython().run_line_magic({name!r}, {arg!r})")
    return "\n".join(out)


def _parse(source: str, ipython: bool = True) -> ast.Module | None:
    python = source
    fast = _fast_escapes(source) if ipython else None
    if fast is not None:
        python, ipython = fast, False
    if ipython:
        try:
            from IPython.core.inputtransformer2 import TransformerManager

            python = TransformerManager().transform_cell(source)
        except Exception:  # IPython missing or a transform failing: read it as plain Python
            python = source
    try:
        return ast.parse(python)
    except RecursionError:
        raise TooDeep from None  # the kernel may compile it: its recursion limit is its own
    except (SyntaxError, ValueError, MemoryError):
        return None  # a cell that does not parse does not run


def _read_piecewise(reader: _Reader, statement: ast.stmt) -> None:
    """A statement the reader failed on (a bug of the reader's, which a cell could be built to
    hit), read piece by piece: the simple statements in its blocks one by one, in order (an
    assignment, then a call through the name it binds: read as calls alone, the name was
    unknown), and, of those that fail again and of the compound statements themselves (an
    ``if``'s test), the calls alone."""
    pending = [statement]
    while pending:
        node = pending.pop()
        own, statements = _split_blocks(node)
        if not statements and node is not statement and _visited(reader, node):
            continue
        for part in own:
            _read_calls_alone(reader, part)
        pending.extend(reversed(statements))


def _visited(reader: _Reader, node: ast.stmt) -> bool:
    try:
        reader.visit(node)
    except Exception:
        return False
    return True


def _split_blocks(node: ast.AST) -> tuple[list[ast.AST], list[ast.stmt]]:
    """A statement's own parts (an ``if``'s test, a ``def``'s defaults and decorators) and the
    statements of its blocks, in order (those of ``except`` and ``case`` clauses included)."""
    own: list[ast.AST] = []
    statements: list[ast.stmt] = []
    for _, value in ast.iter_fields(node):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, ast.stmt):
                statements.append(item)
            elif isinstance(item, (ast.excepthandler, ast.match_case)):
                clause_own, clause_statements = _split_blocks(item)
                own.extend(clause_own)
                statements.extend(clause_statements)
            elif isinstance(item, ast.AST):
                own.append(item)
    return own, statements


def _read_calls_alone(reader: _Reader, node: ast.AST) -> None:
    """Each call in ``node`` read as a statement of its own: what it would start still seen."""
    calls = [inner for inner in ast.walk(node) if isinstance(inner, ast.Call)]
    for call in calls[:MAX_LINES]:
        _visited(reader, ast.copy_location(ast.Expr(value=call), call))


class TooDeep(Exception):
    """A cell nested deeper than the guard's recursion limit lets it parse (Python's parser
    needs a raised ``sys.setrecursionlimit`` for it, which the kernel may have): it cannot
    be read, so it is refused (``CellAnalysis.unread``), never taken for one that does not
    run."""


def _cut_deep(tree: ast.Module) -> None:
    """Expressions nested deeper than MAX_DEPTH within their statement are read down to
    it (walked here without recursion): below, each is replaced by a name the check does not
    know (CUT), and every call made down there is read as a statement of its own just before
    its statement (_alone), as is every name a walrus binds there (``(f := os.system)`` deep
    in a formula, ``f(…)`` after it), so a program started from within a long formula is
    still seen; and the statements after it are read as usual."""
    bodies = [tree.body]
    while bodies:
        body = bodies.pop()
        index = 0
        while index < len(body):
            alone = [_alone(found) for found in _cut_statement(body[index], bodies)]
            body[index:index] = alone
            index += len(alone) + 1


def _cut_statement(statement: ast.stmt, bodies: list[list[ast.stmt]]) -> list[ast.expr]:
    """Cut one statement's expressions past MAX_DEPTH (see _cut_deep); the blocks of
    statements inside it go to ``bodies``. The calls and walruses in what was cut."""
    found: list[ast.expr] = []
    stack: list[tuple[ast.AST, int]] = [(statement, 0)]
    while stack:
        node, depth = stack.pop()
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                if value and isinstance(value[0], ast.stmt):
                    bodies.append(value)
                    continue
                for i, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        value[i] = _cut_or_keep(item, depth + 1, stack, found)
            elif isinstance(value, ast.AST):
                setattr(node, name, _cut_or_keep(value, depth + 1, stack, found))
    return found


def _cut_or_keep(node: ast.AST, depth: int, stack: list, found: list[ast.expr]) -> ast.AST:
    if depth < MAX_DEPTH or not isinstance(node, ast.expr):
        stack.append((node, depth))
        return node
    found.extend(inner for inner in ast.walk(node) if isinstance(inner, (ast.Call, ast.NamedExpr)))
    return _cut_name(node)


def _cut_name(node: ast.expr) -> ast.Name:
    context = getattr(node, "ctx", None) or ast.Load()
    return ast.copy_location(ast.Name(id=CUT, ctx=context), node)


def _alone(found: ast.expr) -> ast.stmt:
    """A call found in a cut expression as a statement of its own (a walrus as the assignment
    it makes), read from a copy cut in turn (_cut_copy): the calls found there share their
    nodes (a call within another's arguments), and cutting one in place would cut the
    arguments of another, an ``os.system('…')`` twenty calls down then read as
    ``os.system(CUT)``."""
    if isinstance(found, ast.Call):
        statement: ast.stmt = ast.Expr(value=found)
    else:
        statement = ast.Assign(targets=[found.target], value=found.value)
    return ast.copy_location(_cut_copy(statement), found)


def _cut_copy(statement: ast.stmt) -> ast.stmt:
    """A copy of a statement made of a call found in a cut expression, its expressions cut
    past MAX_DEPTH as any statement's, and its calls past MAX_CUT_CALL_DEPTH (each is read
    alone too: a chain of a thousand calls is read as a thousand short statements, not as
    ever deeper ones); its other arguments are read as deep as any (a command assembled from
    thirty pieces)."""
    top = copy.copy(statement)
    stack: list[tuple[ast.AST, int]] = [(top, 0)]
    while stack:
        node, depth = stack.pop()
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                setattr(node, name, [_copy_or_cut(item, depth + 1, stack) for item in value])
            elif isinstance(value, ast.AST):
                setattr(node, name, _copy_or_cut(value, depth + 1, stack))
    return top


def _copy_or_cut(node, depth: int, stack: list):
    if not isinstance(node, ast.AST):
        return node
    if isinstance(node, ast.expr) and (
            depth >= MAX_DEPTH or isinstance(node, ast.Call) and depth >= MAX_CUT_CALL_DEPTH):
        return _cut_name(node)
    copied = copy.copy(node)
    stack.append((copied, depth))
    return copied


class _Listed(list):
    """The items one item of a constant table may be, the table too long to take item by item
    (more than MAX_CHOICES, or past the cell's budget of rows): distinct, read as a whole
    (``_run_each``), never one fold per item past the cell's budget of folds."""

    def __init__(self, items, hidden: bool):
        super().__init__(items)
        self.hidden = hidden
        self.done: set = set()  # the (folder, writes) it was run in
        self.keys: list | None = None  # its items as set keys (_hashable), when known
        self.rows: tuple[list, int] | None = None  # (the table's rows, its column), of a column


class _Folded:
    """A constant value recovered from an expression; ``hidden`` when it was assembled."""

    __slots__ = ("value", "hidden")

    def __init__(self, value, hidden: bool):
        self.value, self.hidden = value, hidden


@dataclass
class _Holders:
    """Where a cell keeps functions that start programs aside, away from the names it calls
    them by: ``held``, names whose value may be one or hold one (a table, a class, a namespace,
    a loop's variable); ``members``, the known items of a table, list, class or namespace (key
    -> whether it may be one; a list's in a list); ``classes``, the cell's classes among the
    held (called, they make an instance, whose call is its ``__call__``); ``returning``, the
    cell's functions that return one; ``defined``, the cell's functions and classes (not a
    runner put in its variables under a name not known, see ANY_NAME). Dicts used as ordered
    sets, so they can be trimmed."""

    held: dict = field(default_factory=dict)
    members: dict = field(default_factory=dict)
    classes: dict = field(default_factory=dict)
    returning: dict = field(default_factory=dict)
    defined: dict = field(default_factory=dict)

    def copy(self) -> "_Holders":
        return _Holders(dict(self.held), {k: v.copy() for k, v in self.members.items()},
                        dict(self.classes), dict(self.returning), dict(self.defined))

    def trimmed(self, limit: int) -> "_Holders":
        kept = self.copy()
        for table in (kept.held, kept.members, kept.classes, kept.returning, kept.defined):
            while len(table) > limit:
                table.pop(next(iter(table)))
        return kept


MAX_MEMBERS = 256  # items of one holder whose runners are told apart (more: unknown)
MAX_HOLDING_DEPTH = 48  # nesting a runner is followed through member by member
MAX_DEEP_NODES = 65536  # nodes past that depth looked through for one, per cell
MAX_APPLIED = 64  # functions a cell's check reads as applied (decorators, reduce, map…)
MAX_APPLIED_NODES = 16384  # their bodies' nodes, all together
#: a namespace's methods that bind names, by the dict method they do as
_DICT_SETTERS = {"__ior__": "update", "__setitem__": "__setitem__", "setdefault": "setdefault",
                 "update": "update"}
#: the same methods called unbound, the namespace their first argument
_UNBOUND_DICT_SETTERS = {"dict.update": "update", "dict.__setitem__": "__setitem__",
                         "dict.setdefault": "setdefault", "dict.__ior__": "update",
                         "operator.setitem": "__setitem__", "operator.__setitem__": "__setitem__",
                         "operator.ior": "update", "operator.__ior__": "update"}
_BUILTIN_NAMES = frozenset(dir(builtins))
_MUTATORS = ("append", "extend", "insert", "add", "update", "setdefault", "appendleft",
             "__setitem__")
#: calls that run a function they are given, their result what it returned (partial binds it,
#: atexit.register and ExitStack.callback return it, sorted/min/max return the items)
_RUNS_WHAT_IT_IS_GIVEN = frozenset(_HANDED_OVER) - {"partial", "register", "callback", *_KEYED}
#: attributes of a holder that are its container's (or a key's) methods or a function's data,
#: not what it holds (``r.append("…")`` of a list of runners runs nothing), unless it has a
#: member so named
_NO_RUNNER_ATTRIBUTES = frozenset(
    ("append", "extend", "insert", "remove", "clear", "copy", "index", "count", "sort",
     "reverse", "add", "discard", "get", "setdefault", "update", "keys", "items", "values",
     "pop", "popitem", "popleft", "appendleft", "extendleft", "rotate", "fromkeys",
     # a key's, of ``for name, f in d.items()``
     "startswith", "endswith", "replace", "split", "join", "format", "strip", "lower", "upper",
     "find", "encode", "ljust", "rjust",
     "__doc__", "__name__", "__qualname__", "__module__", "__class__", "__annotations__",
     "__defaults__", "__code__"))


class _Reader(ast.NodeVisitor):
    def __init__(self, memory: CellMemory | None = None):
        self.lines: list[str] = []
        self._seen: set[str] = set()
        self._code_chars = 0
        self.memory = memory
        self.names: dict[str, _Folded] = dict(memory.names) if memory else {}  # constants
        #: names bound to a command with parts only known when it runs (``cmd = "jprq %s" %
        #: port``): its known words, each unknown part a placeholder (see loose)
        self._loose_names: dict[str, str | list] = {}
        self._loose_steps = self._loose_inlined = 0  # of the current reading (see loose)
        #: names bound to a ``string.Template(text)``: the text's node, for ``t.substitute``
        self._templates: dict[str, ast.expr] = {}
        self.aliases: dict[str, str] = dict(memory.aliases) if memory else {}  # name -> module
        self.cwd: str | None = memory.cwd if memory else None
        self._start_cwd = self.cwd  # the folder the kernel is in as the cell starts
        self.commands: list[Command] = []
        self.nesting = 0
        self.unread = ""  # why the cell cannot be read: code it runs from a string too deep to
        # parse here, or blocks (of exec of blocks …) nested past the recursion limit
        # functions of the cell (or earlier cells) that run their argument: name -> its index
        self.runners: dict[str, int] = dict(memory.runners) if memory else {}
        self.holders = memory.holders.copy() if memory else _Holders()
        self._imported: set[str] = set()
        self.literals = ""  # the cell's own string constants, lower case (see _plain)
        self.earlier_words: set[str] = set()  # ... and the words of earlier cells' (a set)
        self._unrolled = 0
        self._row_constants: set[str] = set()  # loop variables bound to a row's constant now
        self._unroll_budget = 4096  # for loops read once per item, nested at most twice
        self.writers: dict[str, str] = {}  # f -> the file ``with open(..., "w") as f`` writes
        # the cell's functions that only return an expression of their arguments (inlined
        # when called with constants: a method name assembled by a helper)
        self.pure: dict[str, ast.FunctionDef] = {}
        self.functions: dict[str, ast.FunctionDef] = {}  # the cell's functions, by name
        #: the cell's generator functions (async or not), by name: what they yield are the
        #: rows of a loop over their call (_yielded)
        self.generators: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = \
            dict(memory.generators) if memory else {}  # (an earlier cell's, called here)
        self._generators_called: dict[str, ast.Call] = {}  # it = g(): it -> the call
        self._generator_facts: dict[int, _GeneratorFacts] = {}  # id(function) -> its facts
        self._class_nodes: dict[str, ast.ClassDef] = {}  # the cell's classes (their generators)
        self._lambdas: dict[str, ast.Lambda] = {}  # g = lambda …: g -> the lambda
        self._partials: dict[str, ast.Call] = {}  # p = functools.partial(…): p -> that call
        self._dict_literals: dict[str, ast.Dict] = {}  # t = {"s": f}: t -> it, while unchanged
        self._mapped_budget = MAX_MAPPED_CALLS
        self._row_items: dict[str, ast.expr] = {}  # a loop's _ITEM name -> its row's item now
        #: the cell's items assigned where their table is not a constant: "d['c']" -> value
        self._items_set: dict[str, _Folded] = {}
        self._same_table: dict[str, str] = {}  # e = d: e -> d (_table_root)
        self._comprehensions: dict[str, ast.DictComp] = {}  # t = {k: … for …}: t -> it
        self._returned_runners: dict[str, str] = {}  # function -> the runner it returns
        self._written: set[str] = set()  # files this cell wrote (their writes add up)
        self._long_budget = MAX_LONG_FOLDING  # characters left for long folds
        self._applied = 0  # functions read as applied (bounded: MAX_APPLIED)
        self._applying = 0  # functions being read as applied, one inside another
        self._apply_budget = MAX_APPLIED_NODES  # nodes of applied functions' bodies left
        self._sizes: dict[int, int] = {}  # id(function) -> its nodes (up to the budget)
        self._deep_budget = MAX_DEEP_NODES  # see _refers_to_runner
        # names of tables of functions that start programs (their items are aliases, d['go'])
        self._tables = {a.split("[", 1)[0] for a in self.aliases if "[" in a}
        #: names bound to ``operator.attrgetter(…)``/``methodcaller(…)`` calls (the call)
        self.getters: dict[str, ast.Call] = {}
        self._classes: list[tuple[ast.ClassDef, dict]] = []  # the classes being read, inner last
        self._class_table: dict[str, dict] = {}  # the cell's classes' constants, by class
        self._str_classes: set[str] = set()  # the cell's classes made from str (_made_from_str)
        #: of those, the ones whose __new__ makes their text: name -> (__new__, the text)
        self._str_news: dict[str, tuple] = {}
        self._instances: dict[str, str] = {}  # k -> K, of k = K()
        self._method_constants_budget = MAX_METHOD_CONSTANTS
        #: variables that hold one item of a constant table, not known which (a loop's over
        #: more rows than are read one by one, ``c = cmds[i]``): name -> the items
        self.choices: dict[str, list[_Folded]] = {}
        #: of those, a loop's variables: name -> (the table's rows, its column), so that an
        #: expression of several of them is folded row by row (``a + " " + b``)
        self._choice_rows: dict[str, tuple[list, int]] = {}
        self._getting = False  # while _item_got reads a table
        self._choice_budget = MAX_CHOICE_FOLDS
        self._row_budget = MAX_ROWS  # items of loops' tables listed, per cell
        self.previous: dict[int, ast.stmt] = {}  # id(loop) -> the statement just before it
        self._listings: dict[tuple, tuple] = {}  # (id(table), view) -> (table, its _Listed)
        self._listed: dict = {}  # (folder, writes) -> the long tables' items run there
        self._listing_budget = MAX_ROWS  # such commands run, per cell (then once per command)
        self._writes = 0  # scripts the cell wrote so far (a command may read one anew)
        self._values_seen: set = set()  # (constant, assembled) whose lines were emitted

    # ------------------------------------------------------------ output

    def emit(self, kind: str, text: str) -> None:
        text = " ".join(str(text).split())[:MAX_VALUE]
        line = f"{kind}: {text}"
        if not text or line in self._seen or not self._within_budget(kind, len(line)):
            return
        self._seen.add(line)
        self.lines.append(line)

    def _within_budget(self, kind: str, size: int) -> bool:
        """Whether one more line of ``kind`` fits, counting it if so."""
        if kind == "text":
            return True  # bounded by the source's own length
        if self._code_chars + size > MAX_CODE_CHARS:
            return False
        self._code_chars += size
        return True

    def emit_value(self, folded: _Folded) -> None:
        self._emit_value(folded.value, folded.hidden)

    def _emit_value(self, value, assembled: bool) -> None:
        if isinstance(value, dict):
            value = [v for pair in list(value.items())[:256] for v in pair]
        if isinstance(value, (list, tuple)):
            for item in value:
                self._emit_value(item, assembled)
            return
        if not isinstance(value, (str, bytes, bytearray)):
            return  # numbers alone say nothing
        key = (bytes(value) if isinstance(value, bytearray) else value, assembled)
        if key in self._values_seen:
            return  # its lines are out already (a long table folded again, in each loop)
        self._values_seen.add(key)
        text = _as_text(value)
        hidden = assembled and not self._plain(text)
        self.emit("hidden" if hidden else "text", text)
        for decoded in _decode_literal(text):
            self.emit("hidden", decoded)

    def _plain(self, text: str | None) -> bool:
        """Whether an assembled string only repeats what the cell spells plainly (a list of
        names joined for a report, a name upper-cased): then it hides nothing."""
        if not text or not (self.literals or self.earlier_words):
            return False
        words = [w for w in _WORDS.split(text.lower()) if w and not w.isdigit()]
        return bool(words) and len(words) <= 64 and all(
            w in self.earlier_words or w in self.literals for w in words)

    def emit_run(self, command, split: bool = True) -> None:
        argv = None
        if isinstance(command, (list, tuple)):
            words = [_as_text(w) for w in command]
            argv = [w for w in words if w is not None]
            command = " ".join(argv)
        text = _as_text(command)
        if not text:
            return
        text = self._expand(text)
        self.emit("run", text)
        for word in text.split():
            for decoded in _decode_literal(word.strip("'\"")):
                self.emit("hidden", decoded)
        if split:
            found = shell.split_argv(argv, self.cwd) if argv is not None else \
                self.split_shell(text, self.cwd)
            self.started(found)

    def split_shell(self, text: str, cwd: str | None) -> list[Command]:
        """The programs a shell line starts; a redirection whose target a shell variable
        spells is a ``run:`` line of its own, expanded (``run: >& /dev/tcp/host/4444``)."""
        redirects: list[str] = []
        found = shell.split_shell(text, cwd, redirects=redirects)
        for redirect in redirects:
            self.emit("run", redirect)
        return found

    def started(self, found: list[Command]) -> None:
        """Programs the cell starts: kept, and what they tell about the cell's folders."""
        for command in found:
            if len(self.commands) >= MAX_LINES:
                return
            argv = self._with_ssh_config(self._resolved(self._globbed(command)))
            self.commands.append(Command(argv, command.cwd))
            original = self._renamed(argv)
            if original is not None:  # ./kworker after mv xmrig kworker: also as xmrig
                self.commands.append(Command(original, command.cwd,
                                             f"{shell.show(argv)}, renamed from "
                                             f"{shell.base(original[0])}"))
            if len(self.commands) >= MAX_LINES:
                return
            self._learn(argv, command.cwd)
            code = shell.python_code(argv)
            if code:
                self.read_code(code, ipython=False)
            script = self._script(argv)
            if script is not None:
                kind, text = script
                if kind == "python":
                    self.read_code(text, ipython=False)
                else:
                    self.started(self.split_shell(text, command.cwd))

    def _globbed(self, command: Command) -> Command:
        """A glob in the program's place, or the script's of an interpreter (``./xm?ig``,
        ``python t*.py``): resolved against the kernel's folder on disk, as the shell would
        (its matches, sorted; none: left as written), where the memory knows the folder."""
        folder = self._disk_folder(command.cwd)
        argv = list(command.argv)
        if folder is None or not argv:
            return command
        script = shell.script_of(argv)
        for index in ([script[0]] if script else []) + [0]:
            matches = shell.glob_in(folder, argv[index])
            if matches:
                argv[index:index + 1] = matches
                return Command(argv, command.cwd, command.note)
        return command

    def _disk_folder(self, cwd: str | None) -> str | None:
        """Where ``cwd`` (the cell's notion of its folder) is on disk: the kernel's own folder
        while the cell has not changed it, a folder below it or an absolute one after."""
        folder = self.memory.folder if self.memory is not None else None
        if folder is None:
            return None
        if cwd == self._start_cwd:
            return folder
        if cwd and cwd.startswith("/"):
            return os.path.join(folder.rsplit("/cwd", 1)[0] + "/root", cwd.lstrip("/")) \
                if folder.startswith("/proc/") else cwd
        start = (self._start_cwd or "").rstrip("/")
        if cwd and (not start or cwd.startswith(start + "/")):
            return os.path.join(folder, cwd[len(start):].lstrip("/"))
        return None

    def _with_ssh_config(self, argv: list[str]) -> list[str]:
        """``ssh -F cfg host`` with a cfg the cell wrote: the forwards it gives that host, as
        the options they are (``-o 'RemoteForward 2222 localhost:22'``)."""
        if not argv or shell.base(argv[0]) != "ssh" or self.memory is None:
            return argv
        config = shell.ssh_config_file(argv)
        text = self.memory.files.get(shell.base(config)) if config else None
        forwards = shell.ssh_forwards(argv, text) if text else []
        return [argv[0], *forwards, *argv[1:]] if forwards else argv

    def _resolved(self, command: Command) -> list[str]:
        """``python run.py`` in a folder: the script's path from that folder, with a folder
        a repository was cloned into named after the repository."""
        argv = list(command.argv)
        found = shell.script_of(argv)
        if found is not None and self.memory is not None:
            index, path = found
            full = shell.join(command.cwd, path) if command.cwd or path.startswith("/") else path
            if full:
                parts = [self.memory.clones.get(p, p) for p in full.split("/")]
                argv[index] = "/".join(parts)
        return argv

    def _learn(self, argv: list[str], cwd: str | None) -> None:
        if self.memory is None or len(argv) < 3:
            return
        if shell.base(argv[0]) in ("mv", "cp", "ln", "install", "rsync"):
            words = [w for w in argv[1:] if not w.startswith("-")]
            if len(words) == 2 and not words[1].endswith("/"):
                old, new = shell.base(words[0]), shell.base(words[1])
                if old and new and old != new and new not in (".", ".."):
                    self.memory.renames[new] = self.memory.renames.get(old, old)
                    if old in self.memory.clones:  # mv roop tool: tool is roop
                        self.memory.clones[new] = self.memory.clones[old]
            return
        if shell.base(argv[0]) != "git" or "clone" not in argv[1:3]:
            return
        words = [w for w in argv[argv.index("clone") + 1:] if not w.startswith("-")]
        if not words:
            return
        repo = shell.base(words[0].rstrip("/"))
        repo = repo[:-4] if repo.endswith(".git") else repo
        folder = shell.base(words[1]) if len(words) > 1 else repo
        if repo and folder:
            self.memory.clones[folder] = self.memory.clones.get(repo, repo) if folder == repo \
                else repo

    def _renamed(self, argv: list[str]) -> list[str] | None:
        if self.memory is None or not self.memory.renames or not argv:
            return None
        found = shell.script_of(argv)
        index = found[0] if found else 0
        original = self.memory.renames.get(shell.base(argv[index]))
        if not original:
            return None
        head = argv[index].rsplit("/", 1)
        renamed = list(argv)
        renamed[index] = f"{head[0]}/{original}" if len(head) == 2 else original
        return renamed

    def _script(self, argv: list[str]) -> tuple[str, str] | None:
        """A script the cell wrote earlier with %%writefile, now run."""
        if self.memory is None or not self.memory.files:
            return None
        found = shell.script_of(argv)
        if found is not None:
            text = self.memory.files.get(shell.base(found[1]))
            return ("python", text) if text else None
        name = shell.base(argv[0])
        if name in shell.SHELLS or name in ("source", "."):
            files = [w for w in argv[1:] if not w.startswith("-")]
            if not files or any(w.startswith("-") and "c" in w.lstrip("-") for w in argv[1:]):
                return None
            name = shell.base(files[0])
        text = self.memory.files.get(name)
        return ("shell", text) if text else None

    def read_code(self, code: str, ipython: bool = True) -> None:
        """Python code the cell runs from a string (exec, eval, python -c): read it too."""
        if self.nesting >= MAX_NESTING or not code:
            return
        try:
            tree = _parse(code[:MAX_SOURCE], ipython)
        except TooDeep:  # run once the cell has raised its recursion limit, as a cell would be
            self.unread = UNREAD_TOO_DEEP
            return
        if tree is None:
            return
        self.nesting += 1
        try:
            _read_statements(self, tree)  # cut and read as a cell's: nested as deeply
        finally:
            self.nesting -= 1

    def change_folder(self, path: str | None) -> None:
        self.cwd = shell.join(self.cwd, path) if path else None

    def _expand(self, command: str) -> str:
        """IPython expands {name} and $name in shell lines from the user's variables."""
        def known(match):
            folded = self.names.get(match.group(1) or match.group(2))
            text = _as_text(folded.value) if folded else None
            return text if text is not None else match.group(0)
        return re.sub(r"\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)", known, command)

    # ------------------------------------------------------------ statements

    def _import_written(self, module: str | None) -> None:
        """``import m`` of an ``m.py`` the cell or an earlier one wrote: its code runs."""
        if self.memory is None or not module or "." in module:
            return
        code = self.memory.files.get(module + ".py")
        if code and module not in self._imported:
            self._imported.add(module)
            self.read_code(code, ipython=False)

    def visit_Import(self, node):
        for alias in node.names:
            self._import_written(alias.name)
            self.emit("import", alias.name)
            self.aliases[alias.asname or alias.name.split(".")[0]] = \
                alias.name if alias.asname else alias.name.split(".")[0]

    def visit_ImportFrom(self, node):
        if node.module and not node.level:
            self._import_written(node.module)
        if node.module:
            self.emit("import", node.module)
            for alias in node.names:
                if alias.name == "*":  # from subprocess import *: run() is subprocess.run
                    self._runners_imported(node.module)
                    continue
                self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def _runners_imported(self, module: str) -> None:
        """All of a module's members bound by their names (``from os import *``,
        ``globals().update(vars(os))``): its runners by theirs."""
        for full in _RUN_CALLS | _RUN_NAMES:
            if full.rsplit(".", 1)[0] == module:
                self.aliases[full.rsplit(".", 1)[1]] = full

    def visit_Assign(self, node):
        self.visit(node.value)
        self._assign(node)

    def _assign(self, node: ast.Assign) -> None:
        """What an assignment binds (its value read already)."""
        self._unpack(node)
        folded = self.fold(node.value)
        # f = os.system, ip = get_ipython(): a new name for a function or for IPython
        alias = None
        if self._is_namespace(node.value):
            alias = NAMESPACE  # g = globals(): g["r"] = os.system binds r
        elif self._main_module(node.value):
            alias = "__main__"  # m = sys.modules["__main__"]: m.r = os.system binds r
        elif isinstance(node.value, ast.Attribute) and self._is_ipython(node.value.value) and \
                node.value.attr in ("system", "system_raw", "system_piped", "getoutput"):
            # sh = get_ipython().system: sh("ngrok tcp 22") runs it in a shell
            alias = "IPython.utils.process." + ("getoutput" if node.value.attr == "getoutput"
                                                else "system")
        elif isinstance(node.value, (ast.Name, ast.Attribute)):
            alias = self.call_name(node.value)
            kept = isinstance(node.value, ast.Name) and (
                node.value.id in self.aliases or node.value.id in _BUILTIN_NAMES and
                node.value.id not in self.names and node.value.id not in self.functions)
            # m = os: m is the module os (a name for a name the cell imported); m = map
            alias = alias if alias and ("." in alias or alias in self.runners or kept) else None
        elif self._is_ipython(node.value):
            alias = IPYTHON
        elif isinstance(node.value, ast.Call) and node.value.args and \
                self.call_name(node.value.func) in ("__import__", "importlib.import_module"):
            module = self.fold(node.value.args[0])  # lt = __import__("libtorrent")
            alias = module.value if module is not None and isinstance(module.value, str) else None
        elif isinstance(node.value, ast.Call) and self.call_name(node.value.func) in _DLL_OPENERS:
            alias = LIBC  # libc = ctypes.CDLL("libc.so.6"): libc.system(...) starts a program
        if isinstance(node.value, ast.Lambda) and isinstance(node.value.body, ast.Call):
            # f = lambda c: os.system(c): f("ngrok tcp 22") starts ngrok
            lam, inner = node.value, node.value.body
            params = [a.arg for a in lam.args.posonlyargs + lam.args.args]
            if inner.args and isinstance(inner.args[0], ast.Name) and inner.args[0].id in params \
                    and self._runs(self.call_name(inner.func)):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.runners[target.id] = params.index(inner.args[0].id)
        for target in node.targets:
            if isinstance(target, ast.Name):
                self._runner_table(target.id, node.value)  # (a new value: a new table)
            if isinstance(target, ast.Subscript):
                self._runner_item(target, node.value)
                self._set_item(target, folded)
            if isinstance(target, ast.Subscript) and \
                    self.call_name(target.value) in ("os.environ", "os.environb"):
                # os.environ["T"] = "ngrok": a later `$T` in a shell line is that value
                key = self.fold(target.slice)
                self._set_env(_as_text(key.value) if key is not None else None, folded)
            if isinstance(target, ast.Name):
                self.choices.pop(target.id, None)
                self._generators_called.pop(target.id, None)
                self._comprehensions.pop(target.id, None)
                if isinstance(node.value, ast.Name) and node.value.id in self.generators:
                    self.generators[target.id] = self.generators[node.value.id]  # g2 = g
                else:
                    self.generators.pop(target.id, None)  # g = …: no longer the generator
                if isinstance(node.value, ast.DictComp):
                    self._comprehensions[target.id] = node.value  # t["system"] is read of it
                self._bind_spelled(target.id, node.value)
                if self._table_root(target.id) == target.id:
                    for spelled in [k for k in self._items_set if k.startswith(target.id + "[")]:
                        del self._items_set[spelled]  # d = {}: none of its items
                self._share_table(target.id, node.value)
                if self._generated(node.value) and isinstance(node.value, ast.Call):
                    self._generators_called[target.id] = node.value
                self._loose_names.pop(target.id, None)
                self._templates.pop(target.id, None)
                if folded is not None:
                    self.names[target.id] = folded
                else:
                    self.names.pop(target.id, None)
                    self._bind_loose(target.id, node.value)
                    items = self._one_of(node.value)
                    if items:  # c = cmds[i]: one of them
                        self.choices[target.id] = items if isinstance(items, _Listed) else \
                            [_Folded(i, False) for i in items]
                self._instance_named(target.id, node.value)
                if alias:
                    self.aliases[target.id] = alias
                elif self.aliases.get(target.id) == NAMESPACE:
                    self.aliases.pop(target.id)  # g = {}: no longer the cell's variables
            elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                key = f"{target.value.id}.{target.attr}"  # K.cmd = "…", self.cmd = "…"
                if folded is not None:
                    self.names[key] = folded
                else:
                    self.names.pop(key, None)
        for target in node.targets:
            self._hold(target, node.value)
            if isinstance(target, ast.Name):
                self.getters.pop(target.id, None)
                if isinstance(node.value, ast.Call) and self.call_name(node.value.func) in (
                        "operator.attrgetter", "operator.methodcaller"):
                    self.getters[target.id] = node.value

    def _bind_spelled(self, name: str, value: ast.expr) -> None:
        """What ``name = value`` makes of name, as the cell spells it: a lambda (``h = g`` of
        one too), a table spelled whole, a partial (``q = p`` of one too), a str class made
        by ``type()``; no longer a class of the cell's."""
        same = value.id if isinstance(value, ast.Name) else None
        lam = self._lambdas.get(same) if same else value if isinstance(value, ast.Lambda) else None
        partial = self._partials.get(same) if same else value if isinstance(value, ast.Call) \
            and self.call_name(value.func) in _PARTIALS and "partial" not in self.functions \
            else None
        spelled = _table_spelled(value)
        if isinstance(spelled, ast.Dict):  # its keys as they are now (k = "s"; {k: f})
            spelled = ast.Dict(keys=[ast.Constant(f.value) if (f := self.fold(k)) is not None
                                     and _hashable_constant(f.value) else None
                                     for k in spelled.keys], values=spelled.values)
        for table, bound in ((self._lambdas, lam), (self._partials, partial),
                             (self._dict_literals, spelled)):
            table.pop(name, None)
            if bound is not None:
                table[name] = bound  # g = lambda …; p = partial(f, a); t = {"s": f}
        self._class_nodes.pop(name, None)  # K = …: no longer the class
        self._str_class_made_by_type(name, value)

    def _table_changed(self, node: ast.expr) -> None:
        """``t += […]``, ``del t[0]``, ``f(t)`` (which may change it): t's items are no longer
        read as spelled (_table_item_called)."""
        while isinstance(node, ast.Subscript):
            node = node.value
        if isinstance(node, ast.Name) and self._dict_literals:
            self._dict_literals.pop(self._table_root(node.id), None)

    def visit_Delete(self, node):
        for target in node.targets:
            self._table_changed(target)
        self.generic_visit(node)

    def _instance_named(self, name: str, value: ast.expr) -> None:
        """``k = K()``: ``k.cmd`` is the class's constant ``K.cmd`` (what k was is forgotten)."""
        for attr in self._class_table.get(self._instances.pop(name, None), {}):
            self._bind_constant(f"{name}.{attr}", None)
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and \
                value.func.id in self._class_table:
            self._instances[name] = value.func.id
            for attr, values in self._class_table[value.func.id].items():
                self._bind_constant(f"{name}.{attr}", values)

    def _runner_in(self, value: ast.expr) -> str | None:
        """The function that starts programs ``value`` names (``os.system``), if it does."""
        runner = self.call_name(value) if isinstance(value, (ast.Name, ast.Attribute)) else None
        return runner if self._runs(runner) else None

    def _set_item(self, target: ast.Subscript, folded: _Folded | None) -> None:
        """``d["c"] = "ngrok tcp 22"`` of a table known as a constant (``d = {}``): d now holds
        it (else d was still read as the table it was); an item not known is taken out of it.
        Of a table not known (``d = dict()``), the item is remembered (_items_set)."""
        owner = target.value
        if isinstance(owner, ast.Name):  # t["s"] = …: t no longer as spelled
            self._dict_literals.pop(self._table_root(owner.id), None)
        spelled = self._item_spelled(target)
        if spelled is not None:  # d["x"]["c"] = …, d = dict(): its item known, if not d
            self._items_set.pop(spelled, None)
            if folded is not None and len(self._items_set) < MAX_NAMES:
                self._items_set[spelled] = folded
        if not isinstance(owner, ast.Name) or owner.id not in self.names or \
                isinstance(target.slice, ast.Slice):
            return
        table, key = self.names[owner.id], self.fold(target.slice)
        if key is None or not isinstance(table.value, (dict, list)) or \
                len(table.value) >= MAX_CHOICES:
            return  # d[k] = … of a key not known: d read as it was (as before this rule)
        changed = dict(table.value) if isinstance(table.value, dict) else list(table.value)
        try:
            if folded is not None:
                changed[key.value] = folded.value
            elif isinstance(changed, dict):
                changed.pop(key.value, None)  # d["c"] = input(): that item not known
            else:
                return
        except (TypeError, IndexError):
            return
        changed = _Folded(changed, table.hidden or bool(folded and folded.hidden))
        root = self._table_root(owner.id)
        for other in [root] + [a for a, r in self._same_table.items() if r == root]:
            if self.names.get(other) is table:  # e = d of a constant d: one table, two names
                self.names[other] = changed
        self.names[owner.id] = changed

    def _items_changed(self, node: ast.Call) -> None:
        """``d.update(c=…)``, ``d.clear()``: d's items set before are not known any more."""
        func = node.func
        while isinstance(func, ast.Attribute) and isinstance(func.value, ast.Subscript):
            func = ast.Attribute(value=func.value.value, attr=func.attr)  # d["x"].update(…)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                func.attr not in ("get", "keys", "values", "items", "copy"):
            self._dict_literals.pop(self._table_root(func.value.id), None)  # t.update(…)
        if self._items_set and isinstance(func, ast.Attribute) and \
                isinstance(func.value, ast.Name) and func.attr not in _STR_METHODS + (
                    "get", "keys", "values", "items", "copy", "index", "count"):
            prefix = self._table_root(func.value.id) + "["
            for spelled in [k for k in self._items_set if k.startswith(prefix)]:
                del self._items_set[spelled]

    def _item_spelled(self, node: ast.Subscript) -> str | None:
        """``d["x"]["c"]`` as a key of _items_set: a variable's items of constant keys."""
        keys = []
        while isinstance(node, ast.Subscript) and len(keys) < MAX_CHAIN:
            key = self.fold(node.slice) if not isinstance(node.slice, ast.Slice) else None
            if key is None or not isinstance(key.value, (str, bytes, int)):
                return None
            keys.append(repr(key.value))
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        return self._table_root(node.id) + "".join(f"[{k}]" for k in reversed(keys))

    def _table_root(self, name: str) -> str:
        """The name a table was first bound to, for another name of it (``e = d``: d), so
        that an item set through either is read through both."""
        return self._same_table.get(name, name)

    def _share_table(self, name: str, value: ast.expr) -> None:
        """``e = d``: e is d's table (its items set through e are d's); ``e = …`` else: e is
        its own name again, and names of the table it was first bound to are not e's."""
        for other in [a for a, root in self._same_table.items() if root == name or a == name]:
            del self._same_table[other]
        if isinstance(value, ast.Name) and value.id != name and value.id not in self.aliases \
                and len(self._same_table) < MAX_NAMES:
            self._same_table[name] = self._table_root(value.id)

    def _set_item_by_call(self, node: ast.Call, name: str | None) -> bool:
        """``d.__setitem__("c", v)``, ``operator.setitem(d, "c", v)``, ``d.update(c=v)``,
        ``d.setdefault("c", v)`` (unless d["c"] is known): as ``d["c"] = v``. Whether it
        was such a call (else d's items are forgotten where its method changes them)."""
        method = node.func.attr if isinstance(node.func, ast.Attribute) else None
        if method in ("__setitem__", "setdefault") and len(node.args) == 2 and not node.keywords:
            table, pairs = node.func.value, [tuple(node.args)]
        elif method == "update" and len(node.args) <= 1:
            table, pairs = node.func.value, [(ast.Constant(k.arg), k.value) for k in node.keywords]
            given = node.args[0] if node.args else ast.Dict(keys=[], values=[])
            if not isinstance(given, ast.Dict) or None in given.keys or \
                    any(k.arg is None for k in node.keywords):
                return False  # d.update(t) of a table not spelled out: d's items forgotten
            pairs += list(zip(given.keys, given.values))
        elif name in ("operator.setitem", "dict.__setitem__") and len(node.args) == 3 and \
                not node.keywords:
            table, pairs = node.args[0], [tuple(node.args[1:])]
        else:
            return False
        if not isinstance(table, (ast.Name, ast.Subscript)) or self._is_namespace(table):
            return False
        for key, value in pairs[:MAX_MEMBERS]:
            target = ast.Subscript(value=table, slice=key, ctx=ast.Store())
            spelled = self._item_spelled(target)
            if method == "setdefault" and (spelled in self._items_set or self.fold(
                    ast.Subscript(value=table, slice=key, ctx=ast.Load())) is not None):
                continue  # set before: setdefault keeps it
            self._set_item(target, self.fold(value))
        return True

    def _runner_item(self, target: ast.Subscript, value: ast.expr) -> None:
        """``d["go"] = os.system``: ``d["go"]`` is an alias of os.system, as in a table."""
        key, runner = self.fold(target.slice), self._runner_in(value)
        if not isinstance(target.value, ast.Name) or key is None:
            return
        item = f"{target.value.id}[{key.value!r}]"
        if runner:
            self.aliases[item] = runner
            self._tables.add(target.value.id)
        else:
            self.aliases.pop(item, None)  # d["go"] = print: no runner any more

    def _runner_table(self, name: str, value: ast.expr) -> None:
        """``d = {"go": os.system}`` (or ``dict(go=…)``, ``[os.system]``): ``d["go"]`` is an
        alias of os.system, kept as the alias ``d['go']``."""
        if isinstance(value, ast.Dict) and None not in value.keys:
            pairs = list(zip(value.keys, value.values))
        elif isinstance(value, (ast.List, ast.Tuple)):
            count = len(value.elts)  # r[1] and r[-1] alike
            pairs = [(ast.Constant(i), item) for i, item in enumerate(value.elts)]
            pairs += [(ast.Constant(i - count), item) for i, item in enumerate(value.elts)]
        elif isinstance(value, ast.Call) and self.call_name(value.func) == "dict" and not value.args:
            pairs = [(ast.Constant(kw.arg), kw.value) for kw in value.keywords if kw.arg]
        else:
            pairs = []
        if name in self._tables:
            for alias in [a for a in self.aliases if a.startswith(name + "[")]:
                del self.aliases[alias]
            self._tables.discard(name)
        for key, item in pairs[:256]:
            runner = self.call_name(item) if isinstance(item, (ast.Name, ast.Attribute)) else None
            folded = self.fold(key) if self._runs(runner) else None
            if folded is not None:
                self.aliases[f"{name}[{folded.value!r}]"] = runner
                self._tables.add(name)

    def _runner_defaults(self, arguments: ast.arguments) -> dict[str, str]:
        """Parameters whose default is a function that starts programs (``lambda f=os.system:
        f("…")``): inside the body, that function."""
        params = arguments.posonlyargs + arguments.args
        pairs = list(zip(params[len(params) - len(arguments.defaults):], arguments.defaults))
        pairs += [(a, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d]
        bound = {}
        for param, default in pairs:
            runner = self.call_name(default) if isinstance(default, (ast.Name, ast.Attribute)) \
                else None
            if self._runs(runner):
                bound[param.arg] = runner
        return bound

    @contextmanager
    def _defaults_bound(self, node):
        """While a function's or lambda's body is read: its runner defaults bound."""
        bound = self._runner_defaults(node.args)
        saved = {name: self.aliases.get(name) for name in bound}
        self.aliases.update(bound)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    self.aliases.pop(name, None)
                else:
                    self.aliases[name] = value

    def _visit_with_defaults(self, node) -> None:
        with self._defaults_bound(node), self._parameters_scoped(node), \
                self._constants_bound(node):
            self.generic_visit(node)

    @contextmanager
    def _constants_bound(self, node):
        """While a function's body is read: its parameters' constant defaults (``cmd="…"``,
        the others unknown), and in a method, its class's constants as ``self.x``/``cls.x``."""
        arguments = node.args
        params = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
        bound = {p: None for p in params}
        bound.update({p: self.fold(d) for p, d in _defaults(arguments).items()})
        owner = self._classes[-1] if self._classes else None
        if owner is not None and any(s is node for s in owner[0].body) and \
                arguments.posonlyargs + arguments.args and \
                len(owner[1]) <= self._method_constants_budget:
            self._method_constants_budget -= len(owner[1])  # bounded: classes × methods
            first = (arguments.posonlyargs + arguments.args)[0].arg
            bound.update({f"{first}.{k}": v for k, v in owner[1].items()})
        saved = {name: (self.names.get(name), self.choices.get(name)) for name in bound}
        # a parameter is not the cell's command of that name (``cmd = f"ngrok {p}"`` outside)
        loose = {name: self._loose_names.pop(name) for name in bound if name in self._loose_names}
        for name, value in bound.items():
            self._bind_constant(name, value)
        try:
            yield
        finally:
            for name, (value, choices) in saved.items():
                self._bind_constant(name, value)
                if choices is not None:
                    self.choices[name] = choices
            for name in bound:
                self._loose_names.pop(name, None)
            self._loose_names.update(loose)

    def _bind_constant(self, name: str, value) -> None:
        """``name`` is ``value`` (a constant), one of ``value`` (a list of them), or unknown."""
        self.names.pop(name, None)
        self.choices.pop(name, None)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, list):
            self.choices[name] = value
        elif value is not None:
            self.names[name] = value

    @contextmanager
    def _parameters_scoped(self, node):
        """While a function's body is read, its parameters are its own: what it keeps in them
        (``self.run = runner``) leaves no holder of that name outside."""
        arguments = node.args
        params = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
        params += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
        tables = (self.holders.held, self.holders.members, self.holders.classes,
                  self.holders.returning)
        saved = [{p: table[p] for p in params if p in table} for table in tables]
        defaults = _defaults(arguments)
        for param in params:  # tools={"sh": os.system}: what its default holds
            default = defaults.get(param)
            self._bind(param, self._tainted(default),
                       self._members_of(default) if default is not None else None)
        try:
            yield
        finally:
            tables = (self.holders.held, self.holders.members, self.holders.classes,
                      self.holders.returning)
            for table, before in zip(tables, saved):
                for param in params:
                    table.pop(param, None)
                table.update(before)

    def visit_Lambda(self, node):
        self._visit_with_defaults(node)

    def _decorated(self, node) -> None:
        """Decorators that start programs, applied as Python applies them (bottom up):
        ``@os.system`` over ``@lambda f: "ngrok tcp 22"`` runs ``os.system("ngrok tcp 22")``;
        the function itself is no command (a bare ``@os.system`` fails and runs nothing)."""
        decorators = node.decorator_list
        if not any(self._runs(self.call_name(d)) for d in decorators
                   if isinstance(d, (ast.Name, ast.Attribute))):
            return
        applied: ast.expr = ast.Name(id=_DECORATED, ctx=ast.Load())
        for decorator in reversed(decorators[-16:]):
            applied = ast.Call(func=decorator, args=[applied], keywords=[])
        self.names[_DECORATED] = _Folded(_FUNCTION, False)
        try:
            self.visit_Call(applied)
        finally:
            self.names.pop(_DECORATED, None)

    def find_runners(self, tree) -> None:
        """Functions that run their argument, wherever they are defined in the cell (``a(x)``
        calls ``b(x)`` defined below it, which runs x): a few passes until nothing changes."""
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for function in functions[:256]:
            if _returns_only(function):
                self.pure[function.name] = function
            if isinstance(function, ast.FunctionDef):
                self.functions[function.name] = function
            if _is_generator(function):
                self.generators[function.name] = function
        for _ in range(4):
            before = dict(self.runners)
            for function in functions[:256]:
                self._runner(function)
            if self.runners == before:
                break
        self._returned_runners = {}
        for function in functions[:256]:  # def mk(): def inner(c): … ; return inner
            last = function.body[-1] if function.body else None
            if isinstance(last, ast.Return) and isinstance(last.value, ast.Name) and \
                    last.value.id in self.runners:
                self._returned_runners[function.name] = last.value.id

    def visit_FunctionDef(self, node):
        """``def run(cmd): subprocess.run(cmd, shell=True)``: ``run('xmrig')`` starts xmrig."""
        self._runner(node)
        if _is_generator(node):  # the generator of that name from here on (one defined
            self.generators[node.name] = node  # again later is not this one)
        else:
            self.generators.pop(node.name, None)
        self._visit_with_defaults(node)
        returns = _returned(node)
        self._bind(node.name, False, None)
        self.holders.defined[node.name] = None
        if any(self._tainted(value) for value in returns):
            self.holders.returning[node.name] = None  # def mk(): return os.system
        self._lambda_decorators(node)
        applied: ast.expr = ast.Name(id=node.name, ctx=ast.Load())
        for decorator in reversed(node.decorator_list[-16:]):
            applied = ast.Call(func=decorator, args=[applied], keywords=[])
        if node.decorator_list and self._tainted(applied):
            self._bind(node.name, True, None)  # @deco, where deco returns os.system
        self._decorated(node)  # last: a reading error there leaves the body read

    def _runner(self, node) -> None:
        with self._defaults_bound(node), self._parameters_scoped(node):
            # def sh(c, run=subprocess.run): run(c, shell=True); tools={"sh": os.system}
            self._runs_its_argument(node)

    def _runs_its_argument(self, node) -> None:
        params = [a.arg for a in node.args.posonlyargs + node.args.args]
        defaults = _defaults(node.args)
        for inner in ast.walk(node):
            if isinstance(inner, ast.Call) and inner.args and isinstance(inner.args[0], ast.Name) \
                    and inner.args[0].id in params:
                name = self.call_name(inner.func)
                if name in _RUN_CALLS or (name and name.startswith(_RUN_PREFIXES)) or \
                        name in self.runners or (isinstance(inner.func, ast.Attribute) and
                                                 self._is_ipython(inner.func.value) and
                                                 inner.func.attr in ("system", "system_raw",
                                                                     "getoutput")) or \
                        _root(inner.func) in defaults and self._possibly_runs(inner.func):
                    index = params.index(inner.args[0].id)
                    self.runners[node.name] = index
                    if params and params[0] in ("self", "cls") and index > 0:
                        self.runners[node.name] = index - 1  # a method: obj.go(cmd)
                    break

    visit_AsyncFunctionDef = visit_FunctionDef

    def _is_ipython(self, node: ast.expr) -> bool:
        """get_ipython(), IPython.get_ipython(), an alias of either, or a name bound to one."""
        if _is_get_ipython(node):
            return True
        if isinstance(node, ast.Call) and not node.args and \
                self.call_name(node.func) in _GET_IPYTHON:
            return True
        return isinstance(node, ast.Name) and self.aliases.get(node.id) == IPYTHON

    def _set_env(self, key: str | None, value: _Folded | None) -> None:
        """An environment variable the cell sets: shell lines read it as ``$key``."""
        if not key or not re.fullmatch(r"[A-Za-z_]\w*", key):
            return
        if value is not None and isinstance(value.value, (str, bytes)):
            self.names[key] = value
        else:
            self.names.pop(key, None)

    def visit_While(self, node):
        """``i = 0; while i < len(T): os.system(T[i]); i += 1``: a counter the loop changes
        is not its first value inside it (``T[i]`` is one of T's items, not ``T[0]``). A text
        variable the body assigns only constants is any of them, or its first value (``c =
        "ls"`` … ``c = "ngrok tcp 22"``); one assigned otherwise keeps its first value (read
        in order, as written: no command found before is lost)."""
        stores = _stores_in(node.body + node.orelse)
        for name, assigned in stores.items():
            if name in self._loose_names and name not in self.names:
                # c = "echo %s" % x … c = "ngrok %s" % x: a command with unknown parts too
                values = self._values_in_loop(name, assigned)
                if values:
                    first = _Folded(self._loose_names.pop(name), False)
                    self.choices[name] = [first, *values]
                continue
            if name not in self.names:
                continue
            values = self._values_in_loop(name, assigned)
            if values and isinstance(self.names[name].value, (str, bytes)):
                self.choices[name] = [self.names[name], *values]
            if values or not isinstance(self.names[name].value, (str, bytes)):
                del self.names[name]
        self.generic_visit(node)

    def _values_in_loop(self, name: str, assigned: list) -> list[_Folded] | None:
        """The constants a loop's body assigns to ``name`` (_stores_in: each plain ``c = …``,
        or None for another store), folded as the loop starts; None where one is stored
        otherwise, is of ``name`` itself (``c = c + "…"``) or does not fold."""
        values = []
        for value in assigned[:16]:
            if value is None or any(isinstance(n, ast.Name) and n.id == name
                                    for n in ast.walk(value)):
                return None
            folded = self.fold(value)
            if folded is None and self._loose_shaped(value):
                text = self.loose(value)  # c = "ngrok tcp %d" % port: its known words
                folded = _Folded(text, False) if isinstance(text, str) and \
                    text.replace(UNKNOWN, "").strip() else None
            if folded is None:
                return None
            values.append(folded)
        return values if len(assigned) <= 16 else None

    def visit_For(self, node):
        """``for t in ["ngrok"]: os.system(t + " tcp 22")``, ``for name, cmd in
        {"t": "ngrok tcp 22"}.items()``, ``for f, c in zip([os.system], [...])``: the body read
        once per row, its variables bound to the row's items."""
        node = _with_named_target(node)
        self._hold_loop(node.target, node.iter)
        names = _loop_names(node.target)
        for name in names:
            self._row_items.pop(name, None)  # (a row of an earlier loop's is not this one's)
        rows = self._rows(node.iter, len(names)) if names else None
        rows = self._picked(node, names, rows)
        size = sum(1 for _ in ast.walk(ast.Module(body=node.body, type_ignores=[]))) \
            if rows and len(rows) <= 16 else 0
        if size and self._unrolled < 2 and size * len(rows) <= self._unroll_budget:
            self._unroll_budget -= size * len(rows)  # bounded: a cell's loops read ≤ 4096 nodes more
            self.visit(node.iter)
            self._unrolled += 1
            try:
                for row in rows:
                    for name, item in zip(names, row):
                        self._bind_item(name, item)
                    for statement in node.body:
                        if not self._filtered_out(statement):
                            self.visit(statement)
            finally:
                self._unrolled -= 1
            for name in names:
                self.names.pop(name, None)
                self.aliases.pop(name, None)
            self._hold_loop(node.target, node.iter)
            for statement in node.orelse:
                self.visit(statement)
            return
        for column, name in enumerate(names if rows else []):  # too many rows, or nested
            items = [row[column] for row in rows if isinstance(row[column], _Folded)]
            if items:
                self.choices[name] = items
                self._choice_rows[name] = (rows, column)
        if rows is None and names:  # a table too long to take row by row: any of its items
            for name, listing in zip(names, self._long_columns(node.iter, len(names)) or []):
                if listing is not None:  # None: an index, or a column not spelled out
                    self.choices[name] = listing
                    if listing.rows is not None:
                        self._choice_rows[name] = listing.rows
        try:
            self.generic_visit(node)
        finally:
            for name in names:
                self.choices.pop(name, None)
                self._choice_rows.pop(name, None)

    def _picked(self, node: ast.For, names: list[str], rows: list[list] | None):
        """The rows of a loop whose whole body is ``if key == "a":`` (no ``else``): only those
        whose key may be "a", as only they run any of it (the others run nothing that could
        change the rest). Rows also of a table assigned a literal just before the loop (nothing
        runs between) and of a search of a module's members (the picked member)."""
        pin = None if self._str_classes else self._pin(node, names)  # as in _filtered_out
        if pin is None:
            return self._filtered_members(node, names) or rows
        column, key = pin
        if rows is None:
            rows = self._fixed_rows(node, names, column, key)
        if rows is None:
            return None
        picked = []
        for row in rows:
            item = row[column]
            folded = item if isinstance(item, _Folded) else \
                self.fold(item) if isinstance(item, ast.expr) else None
            if folded is None or folded.value == key:
                picked.append(row)
        return picked

    def _filtered_members(self, node: ast.For, names: list[str]) -> list[list] | None:
        """The rows of a search of a module's members whose whole body is one ``if`` (no
        ``else``) its runners' names pass (``if k.startswith("syst"):``): each such runner."""
        if len(node.body) != 1 or not isinstance(node.body[0], ast.If) or node.body[0].orelse \
                or not names or len(set(names)) != len(names) or len(names) > 2:
            return None
        module = self._member_pairs(node.iter) if len(names) == 2 else \
            self._member_names(node.iter)
        if not module:
            return None
        accepted = self._accepted_runners(module, names[0], [node.body[0].test])
        return [[ast.Constant(n), _dotted_name(f"{module}.{n}")][:len(names)] for n in accepted]

    def _pin(self, node: ast.For, names: list[str]) -> tuple[int, object] | None:
        """(column, constant) where the loop's whole body is one ``if`` with no ``else`` that
        holds only when that loop variable is that constant."""
        if len(node.body) != 1 or not isinstance(node.body[0], ast.If) or node.body[0].orelse \
                or len(set(names)) != len(names):  # ``for c, c in …``: c is the last column's
            return None
        for column, name in enumerate(names):
            found = _pinned([node.body[0].test], name, self.fold)
            if len(found) == 1 and isinstance(found[0], (str, bytes, int)):
                return column, found[0]
        return None

    def _fixed_rows(self, node: ast.For, names: list[str], column: int, key) -> list[list] | None:
        """The rows of ``for k, v in T.items()`` where the statement before the loop assigns T a
        literal (``T.values()``, ``T.keys()``, ``T`` alike), or of a search of a module's members
        (``vars(os).items()``, ``inspect.getmembers(os)``, ``dir(os)``) for the pinned name."""
        width, source = len(names), node.iter
        module = self._member_pairs(source) if width == 2 and column == 0 else \
            self._member_names(source) if width == 1 else None
        if module and isinstance(key, str) and key.isidentifier():
            member = _dotted_name(f"{module}.{key}")
            return [[ast.Constant(key), member]] if width == 2 else [[ast.Constant(key)]]
        if width == 2 and column == 0 and isinstance(key, str) and key.isidentifier() and \
                self._namespace_pairs(source):  # globals().items(): the variable so named
            return [[ast.Constant(key), ast.Name(id=key, ctx=ast.Load())]]
        view = None
        if isinstance(source, ast.Call) and isinstance(source.func, ast.Attribute) and \
                not source.args and source.func.attr in ("items", "keys", "values"):
            view, source = source.func.attr, source.func.value
        table = self._assigned_just_before(node, source)
        if table is None or (view == "items") != (width == 2):
            return None
        pairs = list(zip(table.keys, table.values))
        if view == "items":
            return [list(pair) for pair in pairs]
        return [[value if view == "values" else key] for key, value in pairs]

    def _namespace_pairs(self, node: ast.expr) -> bool:
        """``globals().items()``, a frame's ``f_globals.items()``, in ``list()`` or not."""
        if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and \
                self.call_name(node.func) in ("list", "tuple", "sorted"):
            node = node.args[0]
        return isinstance(node, ast.Call) and not node.args and \
            isinstance(node.func, ast.Attribute) and node.func.attr == "items" and \
            self._is_namespace(node.func.value)

    def _assigned_just_before(self, node: ast.stmt, name: ast.expr) -> ast.Dict | None:
        """The table literal the statement just before ``node`` assigns ``name``, if it does."""
        before = self.previous.get(id(node))
        if not isinstance(name, ast.Name) or not isinstance(before, ast.Assign) or \
                len(before.targets) != 1 or not isinstance(before.targets[0], ast.Name) or \
                before.targets[0].id != name.id or not isinstance(before.value, ast.Dict) or \
                None in before.value.keys or len(before.value.keys) > MAX_CHOICES:
            return None
        return before.value

    def _filtered_out(self, statement: ast.stmt) -> bool:
        """A comprehension's filter that drops the row bound now, by the row's own constants
        alone (its loops' variables bound to constants the cell spells, no function the cell
        may have replaced, no object of its classes that may compare as it likes): only those
        are sure enough to leave its calls unread."""
        if not isinstance(statement, _Filter) or self._str_classes:
            return False  # S.__ne__ = …, set after class S(str): its S("…") compares as it says
        used = {n.id for n in ast.walk(statement.test) if isinstance(n, ast.Name)}
        plain = all(not isinstance(n, ast.Call) or isinstance(n.func, ast.Attribute) and
                    isinstance(n.func.value, ast.Name) and n.func.value.id in statement.loop_names
                    for n in ast.walk(statement.test))
        return plain and used <= statement.loop_names & self._row_constants and \
            all(name in self.names for name in used) and self._holds(statement.test, {}) is False

    def _bind_item(self, name: str, item) -> None:
        """A loop variable bound to one row's item: a constant, or what an expression is."""
        if isinstance(item, _Folded):
            self.aliases.pop(name, None)
            self._bind(name, False, None)
            self.names[name] = item
            self._row_constants.add(name)
        else:
            self._row_constants.discard(name)
            self._bind_parameter(name, item)
        if name.startswith(_ITEM):  # for d["f"], c in [(os.system, …)]: unpacked from it
            self._row_items[name] = item if isinstance(item, ast.expr) else _node_of(item.value)

    def _rows(self, node: ast.expr, width: int) -> list[list] | None:
        """The rows a loop over ``node`` goes through, each ``width`` items (a constant
        folded, or an expression), when the cell spells them out; else None."""
        items = self._items(node)
        if items is None or width == 1:
            single = items is not None and not any(isinstance(i, list) for i in items)
            return [[i] for i in items] if single else None
        rows = []
        for item in items:
            if isinstance(item, _Folded) and isinstance(item.value, (list, tuple)):
                row = [_Folded(v, item.hidden) for v in item.value]
            elif isinstance(item, (ast.Tuple, ast.List)) and \
                    not any(isinstance(e, ast.Starred) for e in item.elts):
                row = list(item.elts)
            elif isinstance(item, list):
                row = item
            else:
                return None
            if len(row) != width:
                return None
            rows.append(row)
        return rows

    def _items(self, node: ast.expr, depth: int = 0) -> list | None:
        """The items iterating ``node`` gives (at most MAX_CHOICES), when the cell spells
        them out: a constant's (a table's keys), a literal list's, ``d.items()``/``values()``/
        ``keys()``, ``enumerate``, ``zip``, ``range``, ``reversed``/``sorted``/``list``/``tuple``
        of those; a row of several items is a list."""
        if depth > 8 or self._row_budget <= 0:
            return None
        if isinstance(node, ast.NamedExpr):
            node = node.value  # for c in (it := g())
        if isinstance(node, ast.Name) and node.id in self._generators_called:
            return self._items(self._generators_called[node.id], depth + 1)  # it = g()
        generator = self._generator_call(node) if not self._applying else None
        if generator is not None:
            return self._yielded(*generator, depth)
        returned = self._lambda_returned(node)
        if returned is None:
            returned = self._iter_returned(node)  # def __iter__(self): return iter(T)
        if returned is not None:
            return self._items(returned, depth + 1)  # g = lambda: (c for c in T); g()
        folded = self.fold(node)
        if folded is not None:
            value = folded.value
            if isinstance(value, dict):
                value = list(value)
            if not isinstance(value, (list, tuple)) or len(value) > MAX_CHOICES:
                return None
            self._row_budget -= len(value)
            return [_Folded(v, folded.hidden) for v in value]
        if isinstance(node, ast.Name) and isinstance(
                self._dict_literals.get(self._table_root(node.id)), (ast.List, ast.Tuple)):
            node = self._dict_literals[self._table_root(node.id)]  # rows = ((…, os.system),)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            elts = self._spread_items(node.elts)
            if elts is None or len(elts) > MAX_CHOICES:
                return None
            self._row_budget -= len(elts)
            return elts
        if isinstance(node, (ast.GeneratorExp, ast.ListComp, ast.SetComp)) and \
                len(node.generators) == 1 and isinstance(node.elt, ast.Name) and \
                isinstance(node.generators[0].target, ast.Name) and \
                node.elt.id == node.generators[0].target.id:
            return self._items(node.generators[0].iter, depth + 1)  # (x for x in T if …): T's
        if not isinstance(node, ast.Call) or node.keywords and \
                self.call_name(node.func) not in ("sorted", "filter"):
            return None
        func, args = node.func, node.args
        if isinstance(func, ast.Attribute) and func.attr in ("items", "values", "keys") and \
                not args:
            table = self._table(func.value)
            if table is None:
                return None
            if func.attr == "items":
                return [list(pair) for pair in table]
            return [pair[1 if func.attr == "values" else 0] for pair in table]
        name = self.call_name(func)
        if name == "range":
            bounds = [self.fold(a) for a in args]
            if not 1 <= len(bounds) <= 3 or any(b is None or type(b.value) is not int for b in bounds):
                return None
            numbers = range(*(b.value for b in bounds))
            return [_Folded(i, False) for i in numbers] if len(numbers) <= MAX_CHOICES else None
        if name in ("filter", "itertools.filterfalse", "itertools.cycle") and args:
            args = args[-1:]  # filter(f, T): some of T's items
            name = "list"
        if name == "zip" and any(isinstance(a, ast.Starred) for a in args):
            args = self._spread_iterables(args)  # zip(*rows): the rows' columns
            if args is None:
                return None
        inner = [self._items(a, depth + 1) for a in args]
        if name == "zip" and any(i is not None for i in inner):
            # an iterable not spelled out (a holder's values): its items, whatever they are
            count = max(len(i) for i in inner if i is not None)
            inner = [i if i is not None else [_any_item(a)] * count for i, a in zip(inner, args)]
        if any(i is None for i in inner):
            return None
        if name == "enumerate" and len(inner) == 1:
            return [[_Folded(i, False), item] for i, item in enumerate(inner[0])]
        if name == "zip" and inner:
            return [list(row) for row in zip(*inner)]
        if name in ("reversed", "sorted", "list", "tuple", "set", "iter", "aiter",
                    "frozenset") and len(inner) == 1:
            return inner[0]
        if name in ("itertools.chain",) and len(inner) <= 16:
            return [item for items in inner for item in items][:MAX_CHOICES]
        return None

    def _generator_call(self, node: ast.expr):
        """(generator function, its call) where iterating ``node`` runs a generator function
        of the cell's: ``g()``; a method of the cell's class (its own or a base's), ``K().g()``,
        ``k.g()``, ``self.g()`` in the class, ``K.g(k)`` (self spelled as an instance of the
        class, _an_instance; a staticmethod given none); an instance of a class whose
        ``__iter__`` is one, ``It()``/``it`` (iterating it calls ``__iter__(self)``). None
        otherwise."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in self.generators and self.call_name(node.func) == node.func.id:
            return self.generators[node.func.id], node
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = node.func.value, node.func.attr
            if isinstance(owner, ast.Name) and owner.id in self._class_nodes:  # K.g(k)
                method, cls = self._method_of(owner.id, name), None
            else:  # K().g(), k.g(), self.g()
                cls = self._instance_class(owner)
                method = self._method_of(cls, name) if cls else None
            if method is None or not _is_generator(method):
                return None
            bound = cls is not None and not method.decorator_list  # (a staticmethod: no self)
            return method, ast.Call(func=node.func, keywords=node.keywords, args=[
                *([_an_instance(cls)] if bound else []), *node.args])
        method = self._iter_method(node)
        return (method, ast.Call(func=node, args=[_an_instance(self._instance_class(node))],
                                 keywords=[])) if method is not None and \
            _is_generator(method) else None

    def _iter_method(self, node: ast.expr):
        """The ``__iter__`` of the cell's class that iterating ``node`` calls: ``It()``, an
        instance kept in a name."""
        cls = self._instance_class(node)
        method = self._method_of(cls, "__iter__") if cls else None
        return method if method is not None and not method.decorator_list else None

    def _instance_class(self, node: ast.expr) -> str | None:
        """The cell's class ``node`` is an instance of: ``K()``, ``k`` of ``k = K()``, and
        ``self`` while one of the class's methods is read."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in self._class_nodes:
            return node.func.id
        if isinstance(node, ast.Name) and node.id in self._instances:
            return self._instances[node.id]
        if isinstance(node, ast.Name) and node.id == "self" and self._classes:
            return self._classes[-1][0].name
        return None

    def _method_of(self, cls: str, name: str, depth: int = 0):
        """The method ``name`` of the cell's class ``cls``, its own or its bases' (in their
        order, depth first), plain or a staticmethod; None where another decorator wraps it
        or the class does not spell it."""
        found = self._class_nodes.get(cls)
        if found is None or depth > 8:
            return None
        for statement in found.body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    statement.name == name:
                plain = not statement.decorator_list or \
                    len(statement.decorator_list) == 1 and \
                    self.call_name(statement.decorator_list[0]) == "staticmethod"
                return statement if plain else None
        for base in found.bases:
            method = self._method_of(base.id, name, depth + 1) \
                if isinstance(base, ast.Name) else None
            if method is not None:
                return method
        return None

    def _iter_returned(self, node: ast.expr) -> ast.expr | None:
        """What iterating an instance of the cell's class iterates when its ``__iter__`` only
        returns an expression (``return iter(["…"])``, ``return self.g()``), self spelled as
        an instance of its class."""
        method = self._iter_method(node)
        if method is None or _is_generator(method) or len(method.body) != 1 or \
                not isinstance(method.body[0], ast.Return) or method.body[0].value is None:
            return None
        params = [a.arg for a in method.args.posonlyargs + method.args.args]
        instance = _an_instance(self._instance_class(node))
        return _spelled(method.body[0].value, {params[0]: instance}) if len(params) == 1 else None

    def _lambda_returned(self, node: ast.expr) -> ast.expr | None:
        """``g()`` of ``g = lambda: <expression>``: the expression, its parameters spelled as
        the call's arguments (a lambda returning a generator expression is iterated as it)."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            return None
        function = self._lambdas.get(node.func.id)
        given = self._arguments_spelled(function, node) if function is not None else None
        return _spelled(function.body, given) if given is not None else None

    def _yielded(self, function, call: ast.Call, depth: int) -> list | None:
        """The items a generator function of the cell gives when called (``def g(): yield
        "ngrok tcp 22"``, ``async def`` alike): what each ``yield`` yields, ``yield from T``
        T's items, in order of the text, its parameters spelled as the call's arguments, and a
        yield in a loop of the function's once per row of it (``for c in T: yield c``). None
        where one is of another variable of the function's (known only as it runs), as any
        iterable not spelled out."""
        given = self._arguments_spelled(function, call)
        if given is None:
            return None
        if id(function) not in self._generator_facts:
            self._generator_facts[id(function)] = _GeneratorFacts(function)
        facts = self._generator_facts[id(function)]
        self._row_budget -= len(facts.yields)  # bounded: yield from of yield from …
        local, parents = facts.local, facts.parents
        given = {p: a for p, a in given.items() if p not in local}  # c = …: not the argument
        given.update({name: _spelled(value, given) for name, value in facts.once.items()
                      if name not in given})
        items: list = []
        for node in facts.yields:
            value = node.value if node.value is not None else ast.Constant(None)
            value = self._assigned_before(value, node, facts)
            value = _spelled(value, given)
            used = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)} & local
            values = self._per_row(value, used, node, parents, given) if used else [value]
            if values is None:
                return None
            for value in values:
                more = self._items(value, depth + 1) if isinstance(node, ast.YieldFrom) else [value]
                if more is None or len(items) + len(more) > MAX_CHOICES:
                    return None
                items += more
        return items

    def _assigned_before(self, value: ast.expr, node: ast.AST, facts: "_GeneratorFacts"):
        """A yield's value with the function's variables assigned once before it in its
        block spelled as what they were assigned (``d = c`` then ``yield d``: ``c``, a loop's
        variable read row by row), a few levels (``e = d``)."""
        for _ in range(4):
            used = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)}
            spelled = {name: statement.value for name, statement in facts.in_blocks.items()
                       if name in used and _dominated(statement, node, facts.parents)}
            if not spelled:
                return value
            value = _spelled(value, spelled)
        return value

    def _arguments_spelled(self, function, call: ast.Call) -> dict[str, ast.expr] | None:
        """A function's parameters as the call's arguments (or their defaults); None where the
        call spreads its arguments (``*a``, ``**k``) or leaves one without a value."""
        arguments = function.args
        if arguments.vararg or arguments.kwarg or arguments.kwonlyargs or \
                any(isinstance(a, ast.Starred) for a in call.args) or \
                any(k.arg is None for k in call.keywords):
            return None
        params = [a.arg for a in arguments.posonlyargs + arguments.args]
        given = dict(_defaults(arguments))
        given.update(zip(params, call.args))
        given.update({k.arg: k.value for k in call.keywords})
        return given if len(call.args) <= len(params) and set(params) <= set(given) else None

    def _per_row(self, value: ast.expr, used: set[str], node: ast.AST, parents: dict,
                 given: dict[str, ast.expr]) -> list[ast.expr] | None:
        """A yield's value of loops' variables (``for c in T: yield c``), once per row of the
        loops around it, inner first, the row's items spelled for them (MAX_LOOP_ROWS in all
        at most); None if not only theirs (a variable the function computes)."""
        values = [value]
        while used:
            while id(node) in parents and not isinstance(node, (ast.For, ast.AsyncFor)):
                node = parents[id(node)]
            if not isinstance(node, (ast.For, ast.AsyncFor)):
                return None
            names = _loop_names(node.target)
            if len(set(names)) != len(names):
                return None
            rows = self._rows(_spelled(node.iter, given), len(names)) if names else None
            if not rows or len(rows) * len(values) > MAX_LOOP_ROWS:
                return None
            values = [_spelled(v, {n: _node_of(i.value) if isinstance(i, _Folded) else i
                                   for n, i in zip(names, row)}) for row in rows for v in values]
            used -= set(names)
            node = parents.get(id(node), node)
        return values

    def _spread_items(self, elts: list[ast.expr]) -> list | None:
        """A literal's items, ``*T`` of a constant table spread (its items folded); None where
        a starred one is not constant."""
        found = []
        for elt in elts:
            if not isinstance(elt, ast.Starred):
                found.append(elt)
                continue
            folded = self.fold(elt.value)
            if folded is None or not isinstance(folded.value, (list, tuple, str)) or \
                    len(found) + len(folded.value) > MAX_CHOICES:
                return None
            found += [_Folded(v, folded.hidden) for v in folded.value]
        return found

    def _long_columns(self, node: ast.expr, width: int, depth: int = 0) -> list | None:
        """For a loop over a constant table not taken row by row (longer than MAX_CHOICES, or
        past the cell's budget of rows): each loop variable's items, as one _Listed each."""
        if depth > 8:
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                not node.args and node.func.attr in ("items", "keys", "values"):
            table = self.fold(node.func.value)
            views = {"items": ("keys", "values"), "keys": ("keys",),
                     "values": ("values",)}[node.func.attr]
            if table is None or not isinstance(table.value, dict) or len(views) != width:
                return None
            listings = [self._listing(table.value, view, table.hidden) for view in views]
            if width == 2 and listings[0].rows is None:  # k and v of one row, as a column's
                shared = [[_Folded(k, table.hidden), _Folded(v, table.hidden)]
                          for k, v in table.value.items()]
                listings[0].rows, listings[1].rows = (shared, 0), (shared, 1)
            return listings
        if isinstance(node, ast.Call) and node.args and self.call_name(node.func) in (
                "sorted", "reversed", "list", "tuple", "set", "frozenset", "iter", "filter",
                "itertools.filterfalse"):
            return self._long_columns(node.args[-1], width, depth + 1)
        if isinstance(node, (ast.GeneratorExp, ast.ListComp, ast.SetComp)) and \
                len(node.generators) == 1 and isinstance(node.elt, ast.Name) and \
                isinstance(node.generators[0].target, ast.Name) and \
                node.elt.id == node.generators[0].target.id:
            return self._long_columns(node.generators[0].iter, width, depth + 1)
        name = self.call_name(node.func) if isinstance(node, ast.Call) else None
        if name == "enumerate" and len(node.args) == 1 and width == 2:
            items = self._long_columns(node.args[0], 1, depth + 1)  # the index: unknown
            return [None, items[0]] if items else None
        if name == "zip" and len(node.args) == width and not node.keywords:
            columns = [(self._long_columns(a, 1, depth + 1) or [None])[0] for a in node.args]
            return columns if any(c is not None for c in columns) else None
        if name == "itertools.chain" and node.args and width == 1:
            parts = [self.fold(a) for a in node.args]
            if any(p is None or not isinstance(p.value, (list, tuple)) for p in parts):
                return None
            return [self._listing([i for p in parts for i in p.value], None,
                                  any(p.hidden for p in parts))]
        folded = self.fold(node)
        if folded is None and isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            known = [f for f in (self.fold(e) for e in node.elts) if f is not None]
            folded = _Folded([f.value for f in known], any(f.hidden for f in known))
        if folded is None or not isinstance(folded.value, (list, tuple, dict)):
            return None
        if width == 1:
            view = "keys" if isinstance(folded.value, dict) else None
            return [self._listing(folded.value, view, folded.hidden)]
        rows = folded.value if isinstance(folded.value, (list, tuple)) else ()
        if not all(isinstance(r, (list, tuple)) and len(r) == width for r in rows):
            return None  # rows of ``width`` items each: one listing per column
        listings = [self._listing(rows, column, folded.hidden) for column in range(width)]
        if listings[0].rows is None:  # one copy of the rows, that all columns share
            shared = [[_Folded(i, folded.hidden) for i in row] for row in rows]
            for column, listing in enumerate(listings):
                listing.rows = (shared, column)
        return listings

    def _listing(self, table, view: str | int | None, hidden: bool) -> "_Listed":
        """A table's distinct items (its keys' or values' for a dict, a column's of rows),
        listed once per table."""
        known = self._listings.get((id(table), view))
        if known is not None and known[0] is table:
            return known[1]
        items = table.values() if view == "values" else \
            (row[view] for row in table) if isinstance(view, int) else table
        distinct = {}
        for item in items:
            if type(item) is str:
                distinct.setdefault(item, item)
            elif isinstance(item, (bytes, int, list, tuple)) and not isinstance(item, bool):
                distinct.setdefault(_hashable(item), item)
        listing = _Listed(distinct.values(), hidden)
        listing.keys = list(distinct)
        self._listings[(id(table), view)] = (table, listing)  # the table kept: its id stays its
        return listing

    def _run_each(self, commands: list) -> None:
        """Each command a runner is given one of: a _Listed's once per cell, folder and script
        written (past the cell's budget, once per command), so many loops over one long table
        are one reading; others each."""
        if not isinstance(commands, _Listed):
            for command in commands:
                self.emit_run(command)
            return
        place = (self.cwd, self._writes) if self._listing_budget > 0 else None
        if place in commands.done:
            return
        commands.done.add(place)
        seen = self._listed.setdefault(place, set())
        keys = commands.keys if commands.keys is not None else map(_hashable, commands)
        fresh = [(key, command) for key, command in zip(keys, commands) if key not in seen]
        for key, command in fresh:
            seen.add(key)
            if not isinstance(command, int):
                self._listing_budget -= 1
                self.emit_run(command)

    def _table(self, node: ast.expr) -> list[tuple] | None:
        """A table's (key, value) pairs: a constant's, or a literal's with constant keys (out of
        the cell's budget of rows)."""
        if self._row_budget <= 0:
            return None
        folded = self.fold(node)
        if folded is not None and isinstance(folded.value, dict) and \
                len(folded.value) <= MAX_CHOICES:
            self._row_budget -= len(folded.value)
            return [(_Folded(k, folded.hidden), _Folded(v, folded.hidden))
                    for k, v in folded.value.items()]
        if isinstance(node, ast.Dict) and None not in node.keys and \
                len(node.keys) <= MAX_CHOICES:
            self._row_budget -= len(node.keys)
            return list(zip(node.keys, node.values))
        return None

    def visit_ListComp(self, node):
        """``[os.system(c) for c in ["ngrok tcp 22"]]``: read once per item, like a loop."""
        folded = self.fold(node)
        if folded is not None:  # [chr(c) for c in (...)]: a constant
            self.emit_value(folded)
            return
        for generator in node.generators:  # [f(c) for f in [os.system]]
            self._hold_loop(generator.target, generator.iter)
        loop = _as_loops(node)
        if loop is not None and self._rows(loop.iter, len(_loop_names(loop.target))):
            self.visit_For(loop)
            return
        self.generic_visit(node)

    visit_GeneratorExp = visit_SetComp = visit_DictComp = visit_ListComp
    visit_AsyncFor = visit_For  # async for c in g(): its rows are the async generator's

    def _read_file(self, node) -> str | None:
        """``open("m.py").read()`` of a file an earlier cell wrote: its text."""
        if self.memory is None or not isinstance(node.func, ast.Attribute) or \
                node.func.attr not in ("read", "read_text") or not isinstance(node.func.value, ast.Call):
            return None
        opened = node.func.value
        if not opened.args:
            return None
        path = self.fold(opened.args[0])
        path = _as_text(path.value) if path is not None else None
        return self.memory.files.get(shell.base(path)) if path else None

    def visit_With(self, node):
        """``with open("r.sh", "w") as f: f.write(...)``: the file is a script the cell writes.
        ``with nullcontext(os.system) as f``: f may be what the context was made from."""
        for item in node.items:
            path = self._opened_for_writing(item.context_expr)
            if path and isinstance(item.optional_vars, ast.Name):
                self.writers[item.optional_vars.id] = path
            if item.optional_vars is not None:
                self.visit(item.context_expr)
                self._hold_entered(item.optional_vars, item.context_expr)
        self.generic_visit(node)

    def _hold_entered(self, target: ast.expr, context: ast.expr) -> None:
        """What ``with context as target`` binds: a cell class's instance is itself unless its
        ``__enter__`` gives a runner; anything else, what it was made of."""
        func = context.func if isinstance(context, ast.Call) else None
        members = self.holders.members.get(func.id) if isinstance(func, ast.Name) and \
            func.id in self.holders.classes else None
        if isinstance(members, dict) and isinstance(target, ast.Name) and \
                not members.get("__enter__"):
            self._bind(target.id, True, members)
        else:
            self._hold_loop(target, context)

    def visit_Match(self, node):
        """``match os.system: case f: f(…)``: what a case captures may be the subject's."""
        self.visit(node.subject)
        for case in node.cases:
            for name in ast.walk(case.pattern):
                captured = getattr(name, "name", None) or getattr(name, "rest", None)
                if isinstance(captured, str):
                    self._bind(captured, self._tainted(node.subject), None)
            for statement in case.body:
                self.visit(statement)

    visit_AsyncWith = visit_With

    def _opened_for_writing(self, node) -> str | None:
        """The file name of ``open(name, "w")`` (or ``Path(name).open("w")``), else None."""
        if not isinstance(node, ast.Call):
            return None
        name = self.call_name(node.func)
        target, mode = None, None
        if name in ("open", "io.open", "codecs.open") and node.args:
            target = node.args[0]
            mode = node.args[1] if len(node.args) > 1 else None
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "open" and \
                isinstance(node.func.value, ast.Call):
            target = node.func.value.args[0] if node.func.value.args else None
            mode = node.args[0] if node.args else None
        for kw in node.keywords:
            if kw.arg == "mode":
                mode = kw.value
        path, mode = self.fold(target) if target is not None else None, \
            self.fold(mode) if mode is not None else None
        if path is None or mode is None or not isinstance(mode.value, str) or \
                not set(mode.value) & set("wax"):
            return None
        return _as_text(path.value)

    def _wrote(self, path: str | None, text) -> None:
        """A script the cell writes (open().write, Path.write_text): remembered like %%writefile."""
        text = _as_text(text) if text is not None else None
        if self.memory is None or not path or not text:
            return
        name = shell.base(path)
        if not name:
            return
        earlier = self.memory.files.get(name, "") if name in self._written else ""
        self._written.add(name)
        self._writes += 1
        self.memory.files[name] = (earlier + text)[:MAX_SOURCE]

    def _made_from_str(self, node: ast.ClassDef) -> bool:
        """``class S(str): …`` not replacing ``__new__`` (the only method that makes its text:
        ``__init__`` cannot change it): ``S("ngrok tcp 22")`` is that text, to a runner (which
        reads the text itself, whatever the class's methods say) and to every string method
        the check folds. A method it replaces (``__ne__``, ``__add__``, ``replace``) may make
        an expression of it other text than folded, but only other than a text it starts from
        that the cell spells: folded, it hides no command it did not hide unfolded (a cell then
        refused for a command it never builds, not one let through). No filter of the cell's
        drops a row while it has such a class (``__ne__`` may say anything)."""
        self._str_news.pop(node.name, None)
        bases = [self.call_name(b) for b in node.bases if isinstance(b, (ast.Name, ast.Attribute))]
        if len(bases) != 1 or bases[0] != "str" and bases[0] not in self._str_classes or \
                len(node.bases) != 1 or node.keywords or node.decorator_list:
            return False  # class T(S) of a str class S is one too
        named = [n.name for n in ast.walk(node)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        named += [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
        named += [n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)]
        inherited = self._str_news.get(bases[0])
        if "__new__" not in named:
            if inherited is not None:
                self._str_news[node.name] = inherited  # class T(S): S's __new__ makes T's text
            return True
        made = _text_made_by_new(node)
        if made is not None and named.count("__new__") == 2:  # def __new__, str.__new__: no
            self._str_news[node.name] = made  # other (a __new__ = … or one inside a method)
            return True
        return False

    def _str_class_made_by_type(self, name: str, value: ast.expr) -> None:
        """``S = type("S", (str,), {"__ne__": …})``: a str class as a class statement's
        (_made_from_str), unless its table names ``__new__`` or is not spelled out."""
        self._str_classes.discard(name)
        self._str_news.pop(name, None)
        if not (isinstance(value, ast.Call) and self.call_name(value.func) == "type" and
                len(value.args) == 3 and not value.keywords and
                isinstance(value.args[1], ast.Tuple) and len(value.args[1].elts) == 1 and
                isinstance(_table_spelled(value.args[2]), ast.Dict)):
            return  # (its table {…} or dict(…=…))
        base = value.args[1].elts[0]
        base = self.call_name(base) if isinstance(base, (ast.Name, ast.Attribute)) else None
        keys = [self.fold(k) for k in _table_spelled(value.args[2]).keys]
        if (base == "str" or base in self._str_classes and base not in self._str_news) and \
                all(k is not None and isinstance(k.value, str) and k.value != "__new__"
                    for k in keys) and not any(isinstance(n, ast.Attribute) and n.attr == "__new__"
                                               for n in ast.walk(value.args[2])):
            self._str_classes.add(name)

    def visit_ClassDef(self, node):
        for base in node.bases:  # class Server(paramiko.ServerInterface): what it is made of
            name = self.call_name(base) if isinstance(base, (ast.Name, ast.Attribute)) else None
            if name and "." in name:
                self.emit("base", name)
        constants = self._class_constants(node)  # class K: c = "…" — K.c is that constant
        for attr, folded in constants.items():
            self._bind_constant(f"{node.name}.{attr}", folded)
        self._class_table[node.name] = constants
        self._class_nodes[node.name] = node
        if self._made_from_str(node):
            self._str_classes.add(node.name)
        else:
            self._str_classes.discard(node.name)
        self._classes.append((node, constants))
        try:
            self.generic_visit(node)
        finally:
            self._classes.pop()
        self._hold_class(node)
        self._lambda_decorators(node)
        self._decorated(node)

    def _class_constants(self, node: ast.ClassDef) -> dict[str, list[_Folded]]:
        """A class's constants: its attributes (``cmd = "…"``, ``cmd: str = "…"``) and those
        its methods set on the instance (``self.cmd = "…"``), each with every constant it is
        given (``__init__``'s and another method's: either may be what a third reads)."""
        found: dict[str, list[_Folded]] = {}
        for base in node.bases[:16]:  # class B(A): A's constants are B's
            inherited = self._class_table.get(base.id, {}) if isinstance(base, ast.Name) else {}
            for attr, values in inherited.items():
                found.setdefault(attr, []).extend(values)
        for statement in node.body[:MAX_MEMBERS]:
            target = statement.targets[0] if isinstance(statement, ast.Assign) and \
                len(statement.targets) == 1 else getattr(statement, "target", None)
            value = getattr(statement, "value", None)
            if isinstance(statement, (ast.Assign, ast.AnnAssign)) and \
                    isinstance(target, ast.Name) and value is not None:
                folded = self.fold(value)
                if folded is not None:
                    found.setdefault(target.id, []).append(folded)
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for attr, values in self._instance_constants(statement).items():
                    found.setdefault(attr, []).extend(values)
        return {attr: values[:MAX_MEMBERS] for attr, values in found.items()}

    def _instance_constants(self, method) -> dict[str, list[_Folded]]:
        """``self.cmd = "…"`` in a method: the instance's constants it sets."""
        params = method.args.posonlyargs + method.args.args
        found: dict[str, list[_Folded]] = {}
        if not params:
            return found
        for node in ast.walk(method):
            if isinstance(node, ast.Assign) and len(found) < MAX_MEMBERS:
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                            and target.value.id == params[0].arg:
                        folded = self.fold(node.value)
                        if folded is not None:
                            found.setdefault(target.attr, []).append(folded)
        return found

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit_Assign(ast.Assign(targets=[node.target], value=node.value))

    def visit_NamedExpr(self, node):
        self.visit_Assign(ast.Assign(targets=[node.target], value=node.value))

    def _unpack(self, node) -> None:
        """``a, b = "ngrok", "tcp 22"``: each name its constant; of a constant unpacked
        otherwise (``*r, = t``, ``(a, b), d["c"] = …``), each target its part (_unpack_folded)."""
        for target in node.targets:
            if not isinstance(target, (ast.Tuple, ast.List)):
                continue
            spelled = isinstance(node.value, (ast.Tuple, ast.List)) and \
                len(target.elts) == len(node.value.elts) and \
                not any(isinstance(e, ast.Starred) for e in target.elts + node.value.elts)
            if not spelled or not all(isinstance(e, ast.Name) for e in target.elts):
                self._unpack_folded(target, node.value)
            if spelled:
                for name, value in zip(target.elts, node.value.elts):
                    if isinstance(name, ast.Name) and self._is_namespace(value):
                        self.aliases[name.id] = NAMESPACE  # g, h = globals(), 1
                    if isinstance(name, ast.Name):
                        folded = self.fold(value)
                        self._loose_names.pop(name.id, None)
                        if folded is not None:
                            self.names[name.id] = folded
                        else:
                            self.names.pop(name.id, None)
                            self._bind_loose(name.id, value)  # c, p = "ngrok %s" % x, 1
                        runner = self._runner_in(value)  # a, b = print, os.system
                        if runner:
                            self.aliases[name.id] = runner
                        elif self._runs(self.aliases.get(name.id)):
                            del self.aliases[name.id]  # a, b = print, print: no runner any more

    def _unpack_folded(self, target: ast.Tuple | ast.List, value: ast.expr) -> None:
        """A constant unpacked into targets of any kind: each assigned its part (a starred one
        the list of the rest), as ``target = part`` is read: names, items, attributes, and
        targets nested in turn. Else unpacked from what is not known, none is a constant."""
        if isinstance(value, ast.Name) and value.id in self._row_items:
            value = self._row_items[value.id]  # a loop's row, spelled
        if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts) and \
                not any(isinstance(e, ast.Starred) for e in value.elts + target.elts):
            for element, part in zip(target.elts, value.elts):  # d["f"], c = os.system, "…"
                self._assign(ast.Assign(targets=[element], value=part, lineno=0))
            return
        folded = self.fold(value)
        parts = folded.value if folded is not None and \
            isinstance(folded.value, (list, tuple, str, bytes)) else None
        starred = [i for i, e in enumerate(target.elts) if isinstance(e, ast.Starred)]
        if parts is not None and len(starred) <= 1 and len(parts) <= MAX_MEMBERS:
            parts = list(parts)
            if starred:
                i, after = starred[0], len(target.elts) - starred[0] - 1
                rest = len(parts) - i - after
                parts = parts[:i] + [parts[i:i + rest]] + parts[i + rest:] if rest >= 0 else None
            if parts is not None and len(parts) == len(target.elts):
                for element, part in zip(target.elts, parts):
                    element = element.value if isinstance(element, ast.Starred) else element
                    self._assign(ast.Assign(targets=[element], value=_node_of(part), lineno=0))
                    if isinstance(element, ast.Name) and folded.hidden:
                        self.names[element.id] = _Folded(part, True)  # assembled, still
                return
        for element in target.elts:  # a, *r = f(): none of them known
            element = element.value if isinstance(element, ast.Starred) else element
            if isinstance(element, ast.Name):
                self.names.pop(element.id, None)
            elif isinstance(element, (ast.Tuple, ast.List)):
                self._unpack_folded(element, ast.Name(id="\0unknown", ctx=ast.Load()))

    def visit_AugAssign(self, node):
        self.visit(node.value)
        self._table_changed(node.target)
        if isinstance(node.op, ast.BitOr) and self._is_namespace(node.target):
            update = ast.Call(func=ast.Name(id="update", ctx=ast.Load()), args=[node.value],
                              keywords=[])
            self._namespace_set("update", update)  # g = globals(); g |= {"r": os.system}
        if isinstance(node.target, ast.Name) and self._tainted(node.value):
            self.holders.held[node.target.id] = None  # r += [os.system]
            self.holders.members.pop(node.target.id, None)
        if isinstance(node.target, ast.Name) and isinstance(node.op, ast.Add):
            left, right = self.names.get(node.target.id), self.fold(node.value)
            joined = _add(left.value, right.value) if left and right else None
            if joined is not None:
                self.names[node.target.id] = _Folded(joined, True)
                self.emit_value(self.names[node.target.id])

    # ------------------------------------------------------------ runners kept aside
    #
    # A runner used as a value (stored in a table, a class, a namespace, a list it is appended
    # to; returned, looped over) taints the names that hold it, instead of each container
    # being modelled: a call through such a holder (``R.go``, ``d['a']['b']``, ``r.pop()``,
    # ``f`` of ``for f in d.values()``) that does not resolve to a member known to be something
    # else (``d['log']`` where ``d['log'] = print``) may start a program, so a constant command
    # line passed to it counts as run. Calls through anything else are left alone. A class's
    # members are closed (what it does not name is its library bases', no runner) unless a
    # metaclass, a decorator, ``__getattr__`` or a base of unknown members may add to them.

    def _tainted(self, node: ast.expr | None, depth: int = 0) -> bool:
        """Whether ``node``'s value may be, or hold, a function that starts programs."""
        if node is None:
            return False
        if depth > MAX_HOLDING_DEPTH:
            return self._refers_to_runner(node)
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Call)) and \
                self._runs(self.call_name(node)):
            return True  # os.system, getattr(os, "system"), vars(os)["system"]
        if isinstance(node, ast.Name):
            return node.id in self.holders.held
        if (variable := self._namespace_item(node)) is not None:
            return self._tainted(variable, depth + 1)  # globals()["d"]: d
        item = self._comprehension_item(node)
        if item is not None:  # {n: getattr(os, n) for n in ["system"]}["system"]
            return self._tainted(item, depth + 1)
        search = self._filter_as_search(node)
        if search is not None:  # filter(lambda kv: kv[0] == "system", vars(os).items())
            return self._tainted(search, depth + 1)
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            return self._member_may_run(node, depth + 1)
        if isinstance(node, ast.Call):
            return self._returns_runner(node, depth + 1)
        if isinstance(node, ast.NamedExpr):
            return self._tainted(node.value, depth + 1)
        if isinstance(node, ast.Lambda) and isinstance(node.body, ast.Call) and \
                self._runs(self.call_name(node.body.func)):
            return True  # lambda c: os.system(c)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            if self._searched_runner(node, depth):
                return True
            parts = [node.value if isinstance(node, ast.DictComp) else node.elt,
                     *(g.iter for g in node.generators)]
        else:
            parts = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
        return any(self._tainted(part, depth + 1) for part in parts)

    def _filter_as_search(self, node: ast.expr) -> ast.GeneratorExp | None:
        """``filter(lambda p: test, T)`` as the search it is, ``(p for p in T if test)``;
        over a module's pairs (``vars(os).items()``) its parameter is the pair, ``p[0]`` the
        name and ``p[1]`` the member (_searched_runner reads the search)."""
        if not (isinstance(node, ast.Call) and len(node.args) == 2 and not node.keywords and
                self.call_name(node.func) == "filter"):
            return None
        function, table = node.args[0], node.args[1]
        if isinstance(function, ast.Name) and function.id in self.pure:  # def pick(kv): return …
            function = ast.Lambda(args=self.pure[function.id].args,
                                  body=_returned(self.pure[function.id])[0])
        if not isinstance(function, ast.Lambda):
            return None
        params = [a.arg for a in function.args.posonlyargs + function.args.args]
        if len(params) != 1 or function.args.vararg or function.args.kwarg:
            return None
        if not self._member_pairs(table):
            name = ast.Name(id=params[0], ctx=ast.Store())
            return ast.GeneratorExp(elt=ast.Name(id=params[0], ctx=ast.Load()), generators=[
                ast.comprehension(target=name, iter=table, ifs=[function.body], is_async=0)])
        pair = [ast.Name(id=f"{_PAIR}{i}", ctx=ast.Load()) for i in (0, 1)]
        test = _PairSpelled(params[0], pair).visit(copy.deepcopy(function.body))
        return ast.GeneratorExp(elt=ast.Tuple(elts=pair, ctx=ast.Load()), generators=[
            ast.comprehension(target=ast.Tuple(elts=[ast.Name(id=n.id, ctx=ast.Store())
                                                     for n in pair], ctx=ast.Store()),
                              iter=table, ifs=[test], is_async=0)])

    def _searched_runner(self, node, depth: int) -> bool:
        """A search of a module's members that picks names the cell spells (``next(v for k, v
        in vars(os).items() if k == "system")``, ``[getattr(os, k) for k in dir(os) if k in
        ("system",)]``): what it gives is read with the loop's variables bound to each picked
        member that is a runner, and its name. A search that picks no spelled name is no runner
        (honest code lists modules' members)."""
        if len(node.generators) > 3:
            return False
        outer = self._comprehension_rows(node.generators[:-1]) if len(node.generators) > 1 \
            else [({}, {})]
        element = node.value if isinstance(node, ast.DictComp) else node.elt
        last = node.generators[-1]
        for spelled, _ in outer or []:  # for m in [os] for k, v in vars(m).items(): row by row
            spelled = {n: v for n, v in spelled.items() if n not in _loop_names(last.target)}
            loop = ast.comprehension(target=last.target, iter=_spelled(last.iter, spelled),
                                     ifs=[_spelled(t, spelled) for t in last.ifs], is_async=0)
            if self._searched_in(loop, _spelled(element, spelled), depth):
                return True
        return False

    def _searched_in(self, loop: ast.comprehension, element: ast.expr, depth: int) -> bool:
        """_searched_runner of one loop over a module's members, giving ``element``."""
        names = _loop_names(loop.target)
        module = self._member_pairs(loop.iter) if len(names) == 2 else \
            self._member_names(loop.iter) if len(names) == 1 else None
        if not module:
            return False
        picked = dict.fromkeys(n for n in _pinned(loop.ifs, names[0], self.fold)
                               if isinstance(n, str) and n.isidentifier() and
                               self._runs(f"{module}.{n}"))
        picked.update(dict.fromkeys(self._accepted_runners(module, names[0], loop.ifs)))
        for name in picked:
            with self._row_bound(names, [ast.Constant(name), _dotted_name(f"{module}.{name}")]):
                if self._tainted(element, depth + 1):
                    return True
        return False

    def _accepted_runners(self, module: str, name: str, tests: list[ast.expr]) -> list[str]:
        """The module's runners whose names the search's conditions, folded with ``name``
        bound to each, all accept (``k.startswith("syst")``, ``not k != "system"``): a
        condition not folded (``callable(v)``) accepts none, as honest code filters so."""
        if not tests:
            return []
        prefix = f"{module}."
        found = []
        for full in sorted(_RUN_CALLS | _RUN_NAMES):
            member = full[len(prefix):]
            if not full.startswith(prefix) or not member.isidentifier():
                continue
            bound = {name: _Folded(member, False)}
            if all(self._holds(test, bound) is True for test in tests):
                found.append(member)
        return found

    def _holds(self, test: ast.expr, bound: dict[str, _Folded], depth: int = 0) -> bool | None:
        """A name filter's truth with these names bound: comparisons, ``not``, ``and``/``or``
        and a string's predicates of folded operands; None where it does not fold."""
        if depth > 8:
            return None
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = self._holds(test.operand, bound, depth + 1)
            return None if inner is None else not inner
        if isinstance(test, ast.BoolOp):
            parts = [self._holds(v, bound, depth + 1) for v in test.values]
            if isinstance(test.op, ast.And):
                return False if False in parts else None if None in parts else True
            return True if True in parts else None if None in parts else False
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            left, right = (self._fold_with(bound, n, 0) for n in (test.left, test.comparators[0]))
            compare = _COMPARISONS.get(type(test.ops[0]))
            if left is None or right is None or compare is None:
                return None
            try:
                return bool(compare(left.value, right.value))
            except (TypeError, ValueError):
                return None
        if isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and \
                test.func.attr in _STR_PREDICATES and not test.keywords:
            base = self._fold_with(bound, test.func.value, 0)
            args = [self._fold_with(bound, a, 0) for a in test.args]
            if base is None or not isinstance(base.value, str) or None in args:
                return None
            try:
                return bool(getattr(base.value, test.func.attr)(*(a.value for a in args)))
            except (TypeError, ValueError):
                return None
        folded = self._fold_with(bound, test, 0)
        return None if folded is None else bool(folded.value)

    @contextmanager
    def _row_bound(self, names: list[str], values: list[ast.expr]):
        """While a row is read: each name bound to its value as a parameter is, then unbound."""
        tables = (self.names, self.aliases, self.holders.held, self.holders.members,
                  self.holders.classes, self.holders.returning)
        saved = [{n: table[n] for n in names if n in table} for table in tables]
        try:
            for name, value in zip(names, values):
                self._bind_parameter(name, value)
            yield
        finally:
            for table, before in zip(tables, saved):
                for name in names:
                    table.pop(name, None)
                table.update(before)

    def _refers_to_runner(self, node: ast.expr) -> bool:
        """Past MAX_HOLDING_DEPTH (a list in a list … 100 deep, indexed as deep): whether the
        rest names a runner or a holder anywhere but as a callee; read without recursion, out
        of a budget of MAX_DEEP_NODES for the cell."""
        callees = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
        for inner in ast.walk(node):
            self._deep_budget -= 1
            if self._deep_budget < 0:
                return False
            if id(inner) in callees or not isinstance(inner, (ast.Name, ast.Attribute)):
                continue
            if isinstance(inner, ast.Name) and inner.id in self.holders.held or \
                    self._runs(self.call_name(inner)):
                return True
        return False

    def _member_may_run(self, node: ast.Attribute | ast.Subscript, depth: int = 0) -> bool:
        """``X.a`` or ``X[k]`` of a holder: whether that member may be a runner (one known to
        be something else is not; an unknown one may)."""
        if not self._tainted(node.value, depth):
            return False
        members = self._members_of(node.value)
        if isinstance(node, ast.Attribute) and node.attr in _SAME_HOLDER:
            return True  # A.__dict__: what A holds, whatever its members
        if isinstance(node, ast.Attribute) and node.attr in _NO_RUNNER_ATTRIBUTES:
            return isinstance(members, dict) and members.get(node.attr, False)  # r.append
        key = node.attr if isinstance(node, ast.Attribute) else self._key(node.slice)
        if isinstance(node, ast.Subscript) and isinstance(members, dict) and _CLASS in members:
            return True  # D(…)["go"] of a class derived from dict: its items are not its members
        return _may_run(members, key)

    def _key(self, node: ast.expr):
        folded = None if isinstance(node, ast.Slice) else self.fold(node)
        value = folded.value if folded is not None else None
        return value if isinstance(value, (str, bytes, int)) else None

    def _members_of(self, node: ast.expr):
        """The known members of what ``node`` evaluates to, or None."""
        if isinstance(node, ast.Name):
            return self.holders.members.get(node.id)
        if (variable := self._namespace_item(node)) is not None:
            return self._members_of(variable)
        if isinstance(node, ast.NamedExpr):
            return self._members_of(node.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in self.holders.classes:
            if any(self._tainted(a) for a in [*node.args, *(k.value for k in node.keywords)]):
                return None  # C(run=os.system): where it keeps what it is given is not known
            return self.holders.members.get(node.func.id)  # an instance: its class's
        if self._made_class(node):
            return self._literal_members(node.args[2])
        return self._literal_members(node)

    def _literal_members(self, node: ast.expr):
        """The members a table, list or namespace spelled out has (key -> may it run)."""
        if isinstance(node, ast.Dict) and len(node.keys) <= MAX_MEMBERS:
            keys = [self._key(k) if k is not None else None for k in node.keys]
            if None in keys:
                return None  # {**other, …} or a key only known when it runs
            return {k: self._tainted(v) for k, v in zip(keys, node.values)}
        if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) <= MAX_MEMBERS and \
                not any(isinstance(e, ast.Starred) for e in node.elts):
            return [self._tainted(e) for e in node.elts]
        if isinstance(node, ast.Call) and not node.args and len(node.keywords) <= MAX_MEMBERS and \
                all(kw.arg for kw in node.keywords) and \
                (self.call_name(node.func) or "").rsplit(".", 1)[-1] in ("dict", "SimpleNamespace"):
            return {kw.arg: self._tainted(kw.value) for kw in node.keywords}
        return None

    def _returns_runner(self, node: ast.Call, depth: int = 0) -> bool:
        """Whether a call's result may be a runner: from a cell function that returns one, an
        instance of a class that holds one, an item or view fetched from a holder
        (``r.pop()``, ``d.values()``), anything made from one (``iter([os.system])``)."""
        func = node.func
        if isinstance(func, ast.Name) and (func.id in self.holders.returning or
                                           func.id in self.holders.classes):
            return True
        if isinstance(func, ast.Lambda):  # (lambda: os.system)()
            return self._tainted(func.body, depth)
        if isinstance(func, ast.Attribute) and self._tainted(func.value, depth):
            return self._fetched_may_run(func, node)
        name = self.call_name(func) if isinstance(func, (ast.Name, ast.Attribute)) else None
        short = func.attr if isinstance(func, ast.Attribute) else (name or "").rsplit(".", 1)[-1]
        if name == "getattr" and len(node.args) >= 2 and isinstance(self._key(node.args[1]), str):
            attribute = ast.Attribute(value=node.args[0], attr=self._key(node.args[1]))
            return self._member_may_run(attribute, depth) or \
                any(self._tainted(a, depth) for a in node.args[2:])  # getattr(x, "k", default)
        if self._runs(name) or short in _RUNS_WHAT_IT_IS_GIVEN:
            return False  # what running it gave: run_in_executor(None, partial(run, cmd))
        return any(self._tainted(a, depth) for a in [*node.args, *(k.value for k in node.keywords)])

    def _fetched_may_run(self, func: ast.Attribute, node: ast.Call) -> bool:
        """``d.get(k)``, ``d.pop(k)``, ``r.pop()`` of a holder: that item (or the default
        given); any other method's result may be one."""
        members = self._members_of(func.value)
        if func.attr == "pop" and not node.args and isinstance(members, list):
            return _may_run(members, -1)
        if func.attr in ("get", "pop", "setdefault") and node.args:
            return _may_run(members, self._key(node.args[0])) or \
                any(self._tainted(a) for a in node.args[1:])
        return True

    def _possibly_runs(self, func: ast.expr) -> bool:
        """Whether a callee the check cannot name may be a runner kept aside."""
        if isinstance(func, ast.Name):
            members = self.holders.members.get(func.id)
            if isinstance(members, dict) and "__call__" in members:
                return members["__call__"]  # t = Tool(); t(…): its class's __call__
            return func.id in self.holders.held and func.id not in self.holders.classes or \
                self._any_name_may_run(func.id)
        if isinstance(func, (ast.Attribute, ast.Subscript)):
            return self._member_may_run(func)
        if isinstance(func, ast.Call) and isinstance(func.func, ast.Name) and \
                func.func.id in self.holders.classes:  # R()(…): the instance's __call__
            members = self.holders.members.get(func.func.id)
            return bool(isinstance(members, dict) and members.get("__call__"))
        if isinstance(func, ast.Call):
            return self._returns_runner(func)
        if isinstance(func, (ast.NamedExpr, ast.Await)):
            return self._tainted(func.value)
        if isinstance(func, (ast.IfExp, ast.BoolOp)):  # (os.system if … else print)(…)
            return self._tainted(func)
        return False

    def _runner_under_any_name(self) -> None:
        """A runner went into the cell's variables under a name not known: any name not bound
        since may be it, the cell's functions defined before included."""
        self.holders.held[ANY_NAME] = None
        self.holders.defined.clear()

    def _any_name_may_run(self, name: str) -> bool:
        """A name the cell never bound, called after a runner went into its variables under a
        name not known (ANY_NAME): it may be that runner. Python's builtins aside."""
        return ANY_NAME in self.holders.held and name not in _BUILTIN_NAMES and \
            name not in self.names and name not in self.aliases and \
            name not in self.holders.members and name not in self.holders.defined

    def _run_kept_aside(self, node: ast.Call, args: list[_Folded | None]) -> None:
        """A constant command line passed to a runner kept aside: run."""
        command = args[0] if args else next(
            (self.fold(kw.value) for kw in node.keywords if kw.arg in ("args", "command", "cmd")),
            None)
        if command is not None and isinstance(command.value, (str, bytes, list, tuple)):
            self.emit_run(command.value)
        elif command is None and node.args:
            self._run_each(self._one_of(node.args[0]))

    def _joint_rows(self, node: ast.expr) -> tuple[list, dict[str, int]] | None:
        """Where ``node`` uses several variables of one loop over a table's rows: those rows
        and each variable's column."""
        used = dict.fromkeys(k for n in ast.walk(node) if (k := _dotted(n)) in self._choice_rows)
        if len(used) < 2:
            return None
        tables = {id(self._choice_rows[name][0]) for name in used}
        if len(tables) != 1:
            return None
        return self._choice_rows[next(iter(used))][0], \
            {name: self._choice_rows[name][1] for name in used}

    def _fold_rows(self, node: ast.expr, rows: list, columns: dict[str, int]) -> list:
        """``node`` folded with the variables bound to each row's items, out of the cell's
        MAX_CHOICE_FOLDS; distinct."""
        found = {}
        for row in rows:
            bound = {name: row[column] for name, column in columns.items()}
            if not all(isinstance(item, _Folded) for item in bound.values()):
                continue
            self._choice_budget -= 1
            if self._choice_budget < 0:
                break
            folded = self._fold_with(bound, node, 0)
            if folded is not None and isinstance(folded.value, (str, bytes, list, tuple)):
                found.setdefault(_hashable(folded.value), folded.value)
        return list(found.values())

    def _one_of(self, node: ast.expr, depth: int = 0) -> list:
        """The commands an item taken from a constant table may be: ``cmds[k]`` (the key only
        known when it runs), ``cmds.pop()``, ``cmds.get(k)``, ``random.choice(cmds)``; an
        expression of a variable that holds one of a table's items, for each item."""
        chosen = next((key for n in ast.walk(node) if (key := _dotted(n)) in self.choices),
                      None) if self.choices else None
        joint = self._joint_rows(node) if chosen is not None else None
        if joint is not None:
            return self._fold_rows(node, *joint)
        if chosen is not None:
            items = self.choices[chosen]
            if isinstance(items, _Listed) and _dotted(node) == chosen:
                return items  # the item itself: each of the table's, none folded
            found = []
            for item in items:
                self._choice_budget -= 1
                if self._choice_budget < 0:
                    break
                if isinstance(items, _Listed):
                    item = _Folded(item, items.hidden)
                folded = self._fold_with({chosen: item}, node, 0)
                if folded is not None:
                    found.append(folded.value)
            return [f for f in found if isinstance(f, (str, bytes, list, tuple))]
        if isinstance(node, (ast.IfExp, ast.BoolOp)) and depth < 8:
            parts = [node.body, node.orelse] if isinstance(node, ast.IfExp) else node.values
            found, listed = [], False  # "ngrok tcp 22" if x else "echo": either may run
            for part in parts[:16]:
                folded = self.fold(part)
                more = [folded.value] if folded is not None else self._one_of(part, depth + 1)
                listed = listed or isinstance(more, _Listed)
                found += more
            found = [f for f in found if isinstance(f, (str, bytes, list, tuple))]
            return _Listed(found, False) if listed else found
        table = None
        if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice) and \
                self.fold(node.slice) is None:
            table = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("pop", "popleft", "get", "__getitem__"):
            table = node.func.value
            key = self.fold(node.args[0]) if node.args else None
            known = self.fold(table)
            if key is not None and known is not None and isinstance(known.value, dict):
                if key.value in known.value:
                    return [known.value[key.value]]
                default = self.fold(node.args[1]) if len(node.args) > 1 else None
                return [default.value] if default is not None else []  # cmds.get("a", "…")
        elif isinstance(node, ast.Call) and len(node.args) == 1 and \
                self.call_name(node.func) in ("random.choice", "secrets.choice", "next"):
            table = node.args[0].args[0] if isinstance(node.args[0], ast.Call) and \
                node.args[0].args and self.call_name(node.args[0].func) == "iter" else node.args[0]
        folded = self.fold(table) if table is not None else None
        if folded is None or not isinstance(folded.value, (list, tuple, dict)):
            return []
        items = folded.value.values() if isinstance(folded.value, dict) else folded.value
        if len(items) > MAX_CHOICES:  # each of them all the same, listed once
            view = "values" if isinstance(folded.value, dict) else None
            return self._listing(folded.value, view, folded.hidden)
        return [i for i in list(items) if isinstance(i, (str, bytes, list, tuple))]

    def _bind(self, name: str, tainted: bool, members) -> None:
        """``name`` bound anew: it holds a runner or not, with these members if known."""
        for table in (self.holders.held, self.holders.members, self.holders.classes,
                      self.holders.returning):
            table.pop(name, None)
        if tainted:
            self.holders.held[name] = None
        if members is not None:
            self.holders.members[name] = members

    def _bound_name(self, target: ast.expr) -> str | None:
        """The variable an assignment target binds: ``x``, ``globals()['x']``, ``builtins.x``."""
        if isinstance(target, ast.Starred):
            target = target.value
        if isinstance(target, ast.Name):
            return target.id
        if isinstance(target, ast.Subscript) and self._is_namespace(target.value):
            key = self._key(target.slice)  # globals()['x'], sys._getframe().f_globals['x']
            return key if isinstance(key, str) else None
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and \
                self.call_name(target.value) in ("builtins", "__builtins__"):
            return target.attr
        if isinstance(target, ast.Attribute) and self._main_module(target.value):
            return target.attr  # sys.modules['__main__'].x, __main__.x
        return None

    def _hold(self, target: ast.expr, value: ast.expr) -> None:
        """An assignment: the names it binds hold a runner or no longer do; a holder's member
        assigned (``d[k] = …``, ``R.go = …``) known anew."""
        if isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
                for name, item in zip(target.elts, value.elts):
                    self._hold(name, item)
                return
            tainted = self._tainted(value)  # a, b = d.values(): either may be one
            for name in target.elts:
                bound = self._bound_name(name)
                if bound:
                    self._bind(bound, tainted, None)
            return
        bound = self._bound_name(target)
        if bound:
            tainted = self._tainted(value)
            self._bind(bound, tainted, self._members_of(value))
            if isinstance(value, ast.Lambda) and self._tainted(value.body):
                self.holders.returning[bound] = None  # g = lambda: os.system
            if self._made_class(value) and tainted:
                self.holders.classes[bound] = None  # type("A", (), {"go": …})
        elif isinstance(target, ast.Subscript) and self._is_namespace(target.value):
            if self._tainted(value):  # globals()[k] = os.system, k only known when it runs
                self._runner_under_any_name()
        elif isinstance(target, (ast.Attribute, ast.Subscript)):
            key = target.attr if isinstance(target, ast.Attribute) else self._key(target.slice)
            self._set_member(target.value, key, self._tainted(value))

    def _made_class(self, value: ast.expr) -> bool:
        """``type("A", (), {...})``: a class whose members are the table's."""
        return isinstance(value, ast.Call) and len(value.args) == 3 and \
            self.call_name(value.func) == "type"

    def _set_member(self, owner: ast.expr, key, tainted: bool) -> None:
        """``owner[key] = …`` (or ``owner.key``, ``d['a']['b']``): what its root holds now."""
        keys = [key]
        while isinstance(owner, (ast.Attribute, ast.Subscript)):
            if isinstance(owner, ast.Attribute) and owner.attr in ("__dict__", "__class__"):
                owner = owner.value  # a.__dict__["go"] = …, a.__class__.go = …: a.go
                continue
            keys.append(owner.attr if isinstance(owner, ast.Attribute) else self._key(owner.slice))
            owner = owner.value
        if isinstance(owner, ast.Call) and self.call_name(owner.func) in ("vars", "type") and \
                len(owner.args) == 1:
            owner = owner.args[0]  # vars(a)["go"] = …, type(a).go = …: a.go
        if not isinstance(owner, ast.Name):
            return
        name, first = owner.id, keys[-1]
        if tainted:
            self.holders.held[name] = None
        members = self.holders.members.get(name)
        if members is None or len(keys) > 1 and not tainted:
            return  # d['a']['b'] = print: d['a'] may still hold one
        if first is None:
            if tainted:
                del self.holders.members[name]  # d[k] = os.system: any item may be it
        elif isinstance(members, dict) and len(members) < MAX_MEMBERS:
            members[first] = tainted
        elif isinstance(members, list) and type(first) is int and \
                -len(members) <= first < len(members):
            members[first] = tainted

    def _namespace_set(self, method: str, node: ast.Call) -> None:
        """The cell's variables assigned through its namespace's methods:
        ``globals().__setitem__("r", …)``, ``.setdefault("r", …)``, ``.update(r=…)``,
        ``.update({"r": …})``, ``.update([("r", …)])``."""
        pairs: list[tuple[ast.expr | str, ast.expr]] = []
        if method in ("__setitem__", "setdefault") and len(node.args) == 2:
            pairs.append((node.args[0], node.args[1]))
        elif method == "update":
            pairs += [(kw.arg, kw.value) for kw in node.keywords if kw.arg]
            for table in node.args[:1]:
                if isinstance(table, ast.Dict) and None not in table.keys:
                    pairs += list(zip(table.keys, table.values))
                elif isinstance(table, (ast.List, ast.Tuple)) and all(
                        isinstance(p, (ast.Tuple, ast.List)) and len(p.elts) == 2
                        for p in table.elts):
                    pairs += [(pair.elts[0], pair.elts[1]) for pair in table.elts]
                else:
                    self._namespace_table(table)
        for key, value in pairs[:MAX_MEMBERS]:
            key = key if isinstance(key, str) else self._key(key)
            if isinstance(key, str) and key.isidentifier():
                self._hold(ast.Name(id=key, ctx=ast.Store()), value)
            elif self._tainted(value):  # globals()[k] = os.system, k known when it runs
                self._runner_under_any_name()

    def _namespace_table(self, table: ast.expr) -> None:
        """``globals().update(t)`` of a table not spelled out: its members bound where known
        (``t = {"r": os.system}``), else, if it may hold a runner (``vars(os)``, ``zip(…)``,
        a comprehension), any name the cell did not bind may now be one."""
        members = self._members_of(table)
        module = self._members_mapping(table)
        loops = _as_loops(table, _namespace_assigned) if isinstance(table, ast.DictComp) \
            else None
        if isinstance(members, dict) and all(isinstance(k, str) for k in members):
            for key, tainted in members.items():
                self._bind(key, tainted, None)
        elif module is not None:
            self._runners_imported(module)  # globals().update(vars(os)): system() is os.system
        elif loops is not None and self._rows(loops.iter, len(_loop_names(loops.target))):
            self.visit_For(loops)  # .update({n: getattr(os, n) for n in …}): globals()[n] = …
        elif self._tainted(table):
            self._runner_under_any_name()

    def _main_module(self, node: ast.expr) -> bool:
        """``__main__``, ``sys.modules["__main__"]``: the module whose members are the cell's
        variables."""
        node = self._item_got(node)
        if isinstance(node, (ast.Name, ast.Attribute)):
            return self.call_name(node) == "__main__"
        if isinstance(node, ast.Call) and len(node.args) == 1 and \
                self.call_name(node.func) in ("__import__", "importlib.import_module"):
            return self._key(node.args[0]) == "__main__"  # __import__("__main__").r = …
        return isinstance(node, ast.Subscript) and \
            isinstance(node.value, (ast.Name, ast.Attribute)) and \
            self.call_name(node.value) == "sys.modules" and self._key(node.slice) == "__main__"

    def _mutated(self, node: ast.Call, name: str | None) -> None:
        """``r.append(os.system)``, ``setattr(ns, 'go', os.system)``: the holder it goes to
        holds it (a list's indices kept as they shift)."""
        func = node.func
        given = node.args
        if isinstance(func, ast.Attribute) and self._is_namespace(func.value):
            self._namespace_set(_DICT_SETTERS.get(func.attr, func.attr), node)
            return  # globals().update(r=os.system): r
        if name in _UNBOUND_DICT_SETTERS and given and self._is_namespace(given[0]):
            # dict.update(globals(), r=…), operator.setitem(globals(), "r", …): as the method
            self._namespace_set(_UNBOUND_DICT_SETTERS[name],
                                ast.Call(func=func, args=given[1:], keywords=node.keywords))
            return
        if isinstance(func, ast.Attribute) and func.attr == "__setattr__" and len(given) == 2:
            name, given = "setattr", [func.value, *given]  # a.__setattr__("go", os.system)
        if name in ("setattr", "object.__setattr__", "type.__setattr__") and len(given) == 3 \
                and self._main_module(given[0]):
            key = self._key(given[1])  # setattr(sys.modules["__main__"], "r", os.system): r
            if isinstance(key, str) and key.isidentifier():
                self._hold(ast.Name(id=key, ctx=ast.Store()), given[2])
            return
        if name in ("setattr", "object.__setattr__", "type.__setattr__") and len(given) == 3:
            key = self._key(given[1])
            if isinstance(key, str):
                attr = ast.Attribute(value=given[0], attr=key, ctx=ast.Store())
                self._hold(attr, given[2])
            elif isinstance(given[0], ast.Name) and self._tainted(given[2]):
                self._bind(given[0].id, True, None)  # setattr(a, name, os.system): any of a's
            return
        holder = func.value if isinstance(func, ast.Attribute) else None
        if isinstance(holder, ast.Attribute) and holder.attr in ("__dict__", "__class__"):
            holder = holder.value  # a.__dict__.update(go=os.system): a's members
        elif isinstance(holder, ast.Call) and self.call_name(holder.func) in ("vars", "type") \
                and len(holder.args) == 1:
            holder = holder.args[0]
        if not isinstance(holder, ast.Name):
            return
        owner, method = holder.id, func.attr
        members = self.holders.members.get(owner)
        if method == "pop" and isinstance(members, list):
            index = self._key(node.args[0]) if node.args else -1
            if type(index) is int and -len(members) <= index < len(members):
                members.pop(index)
            else:
                self.holders.members.pop(owner, None)
            return
        if method not in _MUTATORS:
            return
        given = [*node.args, *(kw.value for kw in node.keywords)]
        tainted = any(self._tainted(a) for a in given)
        if tainted:
            self.holders.held[owner] = None
        if members is None:
            return
        if method == "append" and isinstance(members, list) and len(node.args) == 1 and \
                len(members) < MAX_MEMBERS:
            members.append(tainted)
        elif method in ("__setitem__", "setdefault") and isinstance(members, dict) and \
                len(node.args) == 2 and self._key(node.args[0]) is not None and \
                len(members) < MAX_MEMBERS:
            key = self._key(node.args[0])
            if method == "__setitem__" or key not in members:
                members[key] = self._tainted(node.args[1])
        elif method == "update" and isinstance(members, dict) and not node.args and \
                len(members) + len(node.keywords) <= MAX_MEMBERS:
            members.update({kw.arg: self._tainted(kw.value) for kw in node.keywords if kw.arg})
        elif tainted or isinstance(members, list):
            del self.holders.members[owner]  # where it went is not known

    def _hold_loop(self, target: ast.expr, items: ast.expr) -> None:
        """``for f in [os.system]``, ``for f in d.values()``: the loop's variables may be one."""
        tainted = self._tainted(items)
        for name in ast.walk(target):
            if isinstance(name, ast.Name):
                self._bind(name.id, tainted, None)

    def _hold_class(self, node: ast.ClassDef) -> None:
        """A class whose attributes hold a runner (``go = os.system``, ``staticmethod(…)``,
        ``__call__ = …``), or a base's do, or a method returns one: a holder, its attributes
        its members (a base's first, then its own; methods are no runners, but a property or
        ``__getattr__`` returning one is, and ``__enter__``'s gives ``with C() as f`` one)."""
        members, returns = self._inherited(node.bases), False
        if not node.keywords and all(self.call_name(d.func if isinstance(d, ast.Call) else d)
                                     in _PLAIN_DECORATORS for d in node.decorator_list):
            members[_CLASS] = False  # no metaclass, no decorator that may add to it: closed
        for statement in node.body[:MAX_MEMBERS]:
            if isinstance(statement, ast.Assign):
                for target in statement.targets:
                    if isinstance(target, ast.Name):
                        members[target.id] = self._tainted(statement.value)
            elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                members[statement.target.id] = self._tainted(statement.value)
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                gives = not isinstance(statement, ast.ClassDef) and \
                    any(self._tainted(v) for v in _returned(statement))
                returns = returns or gives
                members[statement.name] = gives and (
                    statement.name in _GIVING_METHODS or any(
                        self.call_name(d) in ("property", "functools.cached_property")
                        for d in statement.decorator_list))
                members.update(self._instance_members(statement, members))
        tainted = any(members.values()) or returns
        self._bind(node.name, tainted, members)
        if tainted:
            self.holders.classes[node.name] = None

    def _inherited(self, bases: list[ast.expr]) -> dict:
        """The members a class's bases of the cell hold (the first base's win)."""
        members: dict = {}
        for base in reversed(bases[:16]):
            known = self.holders.members.get(base.id) if isinstance(base, ast.Name) else None
            if isinstance(known, dict):
                members.update(known)
            elif self._tainted(base):
                members["__getattr__"] = True  # what it holds is not known: any attribute
        return members

    def _instance_members(self, method, members: dict) -> dict:
        """``self.go = os.system`` (or ``= self.sh``, a member that holds one) in a method: the
        instances' attributes it sets."""
        params = method.args.posonlyargs + method.args.args \
            if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
        if not params:
            return {}
        found = {}
        for node in ast.walk(method):
            if isinstance(node, ast.Assign) and len(found) < MAX_MEMBERS:
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                            and target.value.id == params[0].arg:
                        value = node.value
                        own = isinstance(value, ast.Attribute) and \
                            isinstance(value.value, ast.Name) and value.value.id == params[0].arg
                        found[target.attr] = found.get(target.attr) or (
                            {**members, **found}.get(value.attr, False) is True if own
                            else self._tainted(value))
        return found

    # ------------------------------------------------------------ functions applied

    def _lambda_decorators(self, node) -> None:
        """``@lambda c: subprocess.run(c.cmd, shell=True)`` over a class: its body read with
        ``c`` the class (its constants ``c.cmd``)."""
        for decorator in node.decorator_list[-16:]:
            if isinstance(decorator, ast.Lambda):
                self._apply(decorator, [ast.Name(id=node.name, ctx=ast.Load())])

    def _applied_functions(self, node: ast.Call, name: str | None) -> None:
        """A function of the cell applied to what is known of its arguments: ``(lambda f, c:
        f(c))(os.system, …)``; ``def call(f, c): f(c)`` called with a runner;
        ``map(lambda f: f(…), [os.system])`` (the lambda applied to each item);
        ``functools.reduce(lambda a, f: f(a), [os.system], 'ngrok tcp 22')`` (applied to the
        initial value and the first item, then to what is not known and each next item)."""
        function, args = node.func, node.args
        if isinstance(function, ast.Lambda):
            self._apply(function, args, node.keywords)
        elif isinstance(function, ast.Name) and function.id in self.functions and \
                any(self._tainted(a) for a in [*args, *(k.value for k in node.keywords)]):
            self._apply(self.functions[function.id], args, node.keywords)
        elif name in ("map", "filter") and len(args) == 2 and isinstance(args[0], ast.Lambda) and \
                isinstance(args[1], (ast.List, ast.Tuple)) and self._tainted(args[1]):
            for item in args[1].elts[:16]:
                self._apply(args[0], [item])
        elif name in ("functools.reduce", "_functools.reduce") and len(args) >= 2 and \
                isinstance(args[0], ast.Lambda) and isinstance(args[1], (ast.List, ast.Tuple)):
            items = list(args[1].elts[:16])
            first = args[2] if len(args) > 2 else items.pop(0) if items else None
            for item in items:
                self._apply(args[0], [first, item])
                first = None
        elif name in ("map", "itertools.starmap") and len(args) >= 2 and not node.keywords:
            self._mapped_calls(args[0], args[1:], starred=name == "itertools.starmap")

    def _mapped_calls(self, function: ast.expr, iterables: list[ast.expr], starred: bool) -> None:
        """``map(f, A, B)`` read as the calls it makes, ``f(a, b)`` for each row the cell spells
        out (at most MAX_LOOP_ROWS): whatever ``f`` is, a call of it is read as such
        (``map(globals().__setitem__, ["r"], [os.system])`` binds r, as its call would)."""
        iterables = self._spread_iterables(iterables)
        if iterables is None:
            return
        if starred and len(iterables) == 1:
            rows = [item if isinstance(item, list) else
                    list(item.elts) if isinstance(item, (ast.Tuple, ast.List)) else
                    [_node_of(v) for v in item.value]
                    if isinstance(item, _Folded) and isinstance(item.value, (list, tuple))
                    else None for item in self._items(iterables[0]) or []]
        else:
            iterable = iterables[0] if len(iterables) == 1 else \
                ast.Call(func=ast.Name(id="zip", ctx=ast.Load()), args=iterables, keywords=[])
            items = self._items(iterable) or []
            rows = [item if len(iterables) > 1 else [item] for item in items]
        if not rows or len(rows) > min(MAX_LOOP_ROWS, self._mapped_budget) or any(
                not isinstance(row, list) for row in rows):
            return
        self._mapped_budget -= len(rows)  # bounded: map of lists of maps …
        params = [a.arg for a in function.args.posonlyargs + function.args.args] \
            if isinstance(function, ast.Lambda) else None
        for row in rows:
            given = [_node_of(item.value) if isinstance(item, _Folded) else item for item in row]
            if params is not None and len(params) == len(given) and not function.args.vararg:
                # its body as written with the row's items: what it binds is kept (applied,
                # a function's bindings are forgotten after, a namespace's too)
                self.visit(_spelled(function.body, dict(zip(params, given))))
            else:
                self.visit(ast.Call(func=function, keywords=[], args=given))

    def _spread_iterables(self, iterables: list[ast.expr]) -> list[ast.expr] | None:
        """map's iterables with those spread (``map(f, *zip(("r", os.system)))``) spelled
        out: one list per item of what is spread, as the call receives them; None where what
        is spread is not spelled out."""
        found: list[ast.expr] = []
        for iterable in iterables:
            if not isinstance(iterable, ast.Starred):
                found.append(iterable)
                continue
            items = self._items(iterable.value)
            if items is None or len(items) > MAX_LOOP_ROWS:
                return None
            for item in items:
                if isinstance(item, _Folded) and isinstance(item.value, (list, tuple)):
                    item = [_Folded(v, item.hidden) for v in item.value]
                elif isinstance(item, (ast.List, ast.Tuple)):  # map(f, *[["r"], [os.system]])
                    item = list(item.elts)
                if not isinstance(item, list) or any(isinstance(i, ast.Starred) for i in item):
                    return None
                found.append(ast.List(elts=[_node_of(i.value) if isinstance(i, _Folded) else i
                                            for i in item], ctx=ast.Load()))
        return found

    def _apply(self, function: ast.Lambda | ast.FunctionDef, values: list,
               keywords: list[ast.keyword] = ()) -> None:
        """A function's body read as applied to these arguments (what it binds forgotten
        after; bounded in number and nesting)."""
        if self._applied >= MAX_APPLIED or self._applying >= 4:
            return
        size = self._sizes.get(id(function))
        if size is None:
            size = self._sizes[id(function)] = _size(function, self._apply_budget + 1)
        if size > self._apply_budget:
            return
        self._applied += 1
        self._apply_budget -= size
        params = [a.arg for a in function.args.posonlyargs + function.args.args]
        given = dict(zip(params, values))
        given.update({kw.arg: kw.value for kw in keywords if kw.arg in params})
        saved = self.names, self.aliases, self.holders
        self.names, self.aliases, self.holders = dict(self.names), dict(self.aliases), \
            self.holders.copy()
        self._applying += 1
        try:
            for param in params:
                self._bind_parameter(param, given.get(param))
            for statement in function.body if isinstance(function.body, list) else [function.body]:
                self.visit(statement)
        finally:
            self._applying -= 1
            self.names, self.aliases, self.holders = saved

    def _bind_parameter(self, param: str, value: ast.expr | None) -> None:
        """A parameter bound to its argument: its constant, the runner it is, the holder it
        is, a class's constants (``c.cmd`` for ``C.cmd``)."""
        for table in (self.names, self.aliases, self._loose_names, self._templates):
            table.pop(param, None)
        folded = self.fold(value) if value is not None else None
        if folded is not None:
            self.names[param] = folded
        runner = self._runner_in(value) if value is not None else None
        if runner:
            self.aliases[param] = runner
        elif isinstance(value, ast.Name) and value.id in self.aliases:
            self.aliases[param] = self.aliases[value.id]  # a module: v.system is os.system
        self._bind(param, self._tainted(value), self._members_of(value) if value else None)
        if isinstance(value, ast.Name):
            prefix = value.id + "."
            for key in [k for k in self.names if k.startswith(prefix)][:MAX_MEMBERS]:
                self.names[param + "." + key[len(prefix):]] = self.names[key]

    # ------------------------------------------------------------ expressions

    def _unstarred(self, node: ast.Call) -> ast.Call:
        """``f(*["ngrok tcp 22"])``, ``f(**{"args": cmd})``: the call with its arguments spelled out."""
        if not any(isinstance(a, ast.Starred) for a in node.args) and \
                all(kw.arg for kw in node.keywords):
            return node
        args, keywords = [], []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                if isinstance(arg.value, (ast.List, ast.Tuple)):
                    args.extend(arg.value.elts)
                    continue
                folded = self.fold(arg.value)
                if folded is not None and isinstance(folded.value, (list, tuple)):
                    args.extend(ast.Constant(v) for v in folded.value[:256])
                    continue
            args.append(arg)
        for kw in node.keywords:
            if kw.arg is None and isinstance(kw.value, ast.Dict):
                for k, v in zip(kw.value.keys, kw.value.values):
                    key = self.fold(k) if k is not None else None
                    if key is not None and isinstance(key.value, str):
                        keywords.append(ast.keyword(arg=key.value, value=v))
                continue
            keywords.append(kw)
        return ast.Call(func=node.func, args=args, keywords=keywords)

    def _partial_applied(self, node: ast.Call) -> ast.Call:
        """``functools.partial(f, a)(b)`` (or ``p(b)`` of ``p = partial(f, a)``, a partial of a
        partial): the call it makes, ``f(a, b)``, with the keywords of both."""
        for _ in range(MAX_NAMED_CHAIN):
            bound = node.func
            if isinstance(bound, ast.Name) and bound.id in self._partials:
                bound = self._partials[bound.id]
            if not (isinstance(bound, ast.Call) and bound.args and
                    self.call_name(bound.func) in _PARTIALS and "partial" not in self.functions):
                return node
            node = ast.Call(func=bound.args[0], args=[*bound.args[1:], *node.args],
                            keywords=[*bound.keywords, *node.keywords])
        return node

    def _table_item_called(self, node: ast.Call) -> ast.Call:
        """``t["s"](…)`` of ``t = {"s": globals().__setitem__}``: the call of what the table
        spells for that key (a table of functions is read as its functions, called)."""
        func = node.func
        if isinstance(func, ast.Call) and isinstance(func.func, ast.Attribute) and \
                func.func.attr == "get" and len(func.args) == 1 and not func.keywords:
            func = ast.Subscript(value=func.func.value, slice=func.args[0], ctx=ast.Load())
        if not (isinstance(func, ast.Subscript) and isinstance(func.value, ast.Name) and
                self._table_root(func.value.id) in self._dict_literals):
            return node
        table = self._dict_literals[self._table_root(func.value.id)]
        key = self.fold(func.slice)
        if key is None or not _hashable_constant(key.value):
            return node
        if isinstance(table, (ast.List, ast.Tuple)):  # t = [globals().__setitem__]; t[0](…)
            index = key.value
            found = table.elts[index] if type(index) is int and \
                -len(table.elts) <= index < len(table.elts) else None
            return ast.Call(func=found, args=node.args, keywords=node.keywords) \
                if found is not None else node
        found = None
        for k, value in zip(table.keys, table.values):  # the last of a key spelled twice
            if k is None:
                return node  # a key not known: it may be this one
            if type(k.value) is type(key.value) and k.value == key.value:
                found = value
        return ast.Call(func=found, args=node.args, keywords=node.keywords) \
            if found is not None else node

    def visit_Call(self, node):
        node = self._table_item_called(self._partial_applied(self._unstarred(node)))
        name = self.call_name(node.func)
        args = [self.fold(a) for a in node.args]
        if name and "." in name and not (
                isinstance(node.func, ast.Attribute) and self._is_ipython(node.func.value)):
            self.emit("call", name)
        if name == "dict" and "dict" not in self.names:
            for keyword in node.keywords:  # dict(method="login"): its keys, as {"method": …}'s
                if keyword.arg:
                    self.emit("text", keyword.arg)
        self._mutated(node, name)
        if not self._set_item_by_call(node, name):
            self._items_changed(node)
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            if isinstance(arg, ast.Name):
                self._table_changed(arg)  # put(t): t may be changed there
        self._applied_functions(node, name)
        if name and name.startswith("sh.") and name.count(".") == 1 and \
                self.aliases.get(name.split(".")[0], "sh") == "sh" and \
                name not in ("sh.Command", "sh.contrib", "sh.ErrorReturnCode") and \
                "sh" in self.aliases.values():
            # the sh library: sh.ngrok("tcp", "22") runs the program ngrok
            words = [_as_text(a.value) if a is not None else UNKNOWN for a in args]
            self.emit_run([name.split(".", 1)[1], *[w or UNKNOWN for w in words]])
        if name in _RUN_CALLS or (name and name.startswith(_RUN_PREFIXES)):
            self._run_call(name, node, args)
        elif self._handed_over(node, name):
            pass
        elif self._method_caller(node):
            pass
        elif isinstance(node.func, ast.Attribute) and node.func.attr in (
                "define_alias", "soft_define_alias") and \
                isinstance(node.func.value, ast.Attribute) and \
                node.func.value.attr == "alias_manager" and self._is_ipython(node.func.value.value) \
                and len(args) == 2 and None not in args:
            # ip.alias_manager.define_alias("go", "ngrok tcp 22"), then %go: as %alias
            self.names[f"%alias {_as_text(args[0].value)}"] = _Folded(
                (_as_text(args[1].value) or "").replace("%s", "").replace("%l", ""), False)
        elif isinstance(node.func, ast.Attribute) and node.func.attr in ("append", "extend") and \
                isinstance(node.func.value, ast.Name) and len(args) == 1 and \
                isinstance(self.names.get(node.func.value.id, _Folded(None, False)).value, list):
            # args.append("ngrok"): the list, a constant, grows
            held = self.names[node.func.value.id]
            item = args[0]
            if item is None or node.func.attr == "extend" and not isinstance(item.value, (list, tuple)):
                self.names.pop(node.func.value.id, None)
            else:
                more = list(item.value) if node.func.attr == "extend" else [item.value]
                self.names[node.func.value.id] = _Folded((held.value + more)[:256], True)
        elif isinstance(node.func, ast.Attribute) and name is None and \
                node.func.attr in self.runners and len(args) > self.runners[node.func.attr] and \
                args[self.runners[node.func.attr]] is not None:
            # R().go("ngrok tcp 22") where the cell's method go() runs its argument
            self.emit_run(args[self.runners[node.func.attr]].value)
        elif name in ("exec", "eval", "compile") and node.args and isinstance(node.args[0], ast.Call) \
                and self._read_file(node.args[0]):
            self.read_code(self._read_file(node.args[0]), ipython=False)
        elif name in ("os.putenv", "os.environ.setdefault", "os.environ.__setitem__") and \
                len(args) == 2 and args[0] is not None:
            self._set_env(_as_text(args[0].value), args[1])
        elif name == "os.environ.update":
            for kw in node.keywords:
                if kw.arg:
                    self._set_env(kw.arg, self.fold(kw.value))
            if args and args[0] is not None and isinstance(node.args[0], ast.Dict):
                for k, v in zip(node.args[0].keys, node.args[0].values):
                    key = self.fold(k) if k is not None else None
                    self._set_env(_as_text(key.value) if key is not None else None, self.fold(v))
        elif isinstance(node.func, ast.Attribute) and node.func.attr in (
                "write", "writelines", "write_text", "write_bytes") and args and args[0] is not None:
            owner = node.func.value
            if node.func.attr in ("write_text", "write_bytes"):
                path = self.fold(owner.args[0]) if isinstance(owner, ast.Call) and owner.args and \
                    (self.call_name(owner.func) or "").endswith("Path") else None
                path = _as_text(path.value) if path is not None else None
            elif isinstance(owner, ast.Name):
                path = self.writers.get(owner.id)
            else:
                path = self._opened_for_writing(owner)
            text = args[0].value
            if isinstance(text, (list, tuple)):
                text = "".join(_as_text(t) or "" for t in text)
            self._wrote(path, text)
        elif isinstance(node.func, ast.Attribute) and self._is_ipython(node.func.value):
            self._ipython_call(node.func.attr, args)
        elif name in self.runners and len(args) > self.runners[name] and \
                args[self.runners[name]] is not None:
            self.emit_run(args[self.runners[name]].value)
        elif name in self.runners and (given := self._runner_argument(name, node)) is not None \
                and (self.fold(given) is not None or self._one_of(given)):
            folded = self.fold(given)  # sh(cmd="…"), sh(cmds[i])
            self._run_each([folded.value] if folded is not None else self._one_of(given))
        elif self._possibly_runs(node.func):
            self._run_kept_aside(node, args)
        elif name in ("exec", "eval", "compile", "builtins.exec", "builtins.eval") and args \
                and args[0] is not None and _as_text(args[0].value):
            for table in node.args[1:3]:  # exec("r(…)", {"r": os.system}): its globals, locals
                if not self._is_namespace(table):
                    self._namespace_set("update", ast.Call(func=node.func, args=[table],
                                                           keywords=[]))
            self.read_code(_as_text(args[0].value), ipython=False)
        elif name in ("importlib.import_module", "__import__") and args and args[0] is not None:
            self._import_written(_as_text(args[0].value))
        elif name in _UNPICKLERS and args and \
                (pickled := args[0] or self._fold_long(node.args[0])) is not None and \
                isinstance(pickled.value, (bytes, bytearray, str)):
            self._unpickled(pickled.value)
        elif name in _STREAM_UNPICKLERS and node.args and \
                (pickled := self._streamed(node.args[0])) is not None:
            self._unpickled(pickled)  # pickle.load(io.BytesIO(b"…")), Unpickler(…) alike
        elif name == "marshal.loads" and args and \
                (marshalled := args[0] or self._fold_long(node.args[0])) is not None and \
                isinstance(marshalled.value, (bytes, bytearray)):
            self._unmarshalled(marshalled.value)
        elif name in ("os.chdir",) and args and args[0] is not None:
            self.change_folder(_as_text(args[0].value))
        elif name in _PY_DOWNLOADS and args and args[0] is not None and _as_text(args[0].value):
            # a download the kernel makes itself: checked as a downloader would be
            self.started([Command(["python-download", _as_text(args[0].value)], self.cwd)])
        elif name and name.endswith("Repo.clone_from") and len(args) >= 1 and args[0] is not None:
            dest = _as_text(args[1].value) if len(args) > 1 and args[1] is not None else None
            self.started(shell.split_argv(["git", "clone", _as_text(args[0].value) or UNKNOWN,
                                           *([dest] if dest else [])], self.cwd))
        elif name in ("os.rename", "os.replace", "shutil.move", "shutil.copy", "shutil.copy2",
                      "shutil.copyfile", "os.symlink") and len(args) >= 2 and \
                all(a is not None and _as_text(a.value) for a in args[:2]):
            self.started(shell.split_argv(["mv", _as_text(args[0].value),
                                           _as_text(args[1].value)], self.cwd))
        elif name in ("runpy.run_path", "runpy.run_module") and args and args[0] is not None \
                and _as_text(args[0].value):
            # the script runs in the kernel: checked as the python program it would be
            path = _as_text(args[0].value)
            self.started(shell.split_argv(["python", path] if name == "runpy.run_path"
                                          else ["python", "-m", path], self.cwd))
        folded = self.fold(node)
        if folded is not None:
            self.emit_value(folded)
        else:
            self.generic_expression(node)

    def _runner_argument(self, name: str, node: ast.Call) -> ast.expr | None:
        """What a cell function that runs its argument is given for it, by position or by
        its parameter's name."""
        index = self.runners[name]
        if index < len(node.args):
            return node.args[index]
        function = self.functions.get(name)
        params = [a.arg for a in function.args.posonlyargs + function.args.args] \
            if function is not None else []
        if params and params[0] in ("self", "cls"):
            index += 1  # a method's index skips its instance
        param = params[index] if index < len(params) else None
        return next((kw.value for kw in node.keywords if param and kw.arg == param), None)

    def _handed_over(self, node: ast.Call, name: str | None) -> bool:
        """A function that starts programs handed to another that calls it: ``Thread(target=
        os.system, args=(cmd,))``, ``pool.submit(os.system, cmd)``, ``map(os.system, cmds)``."""
        short = node.func.attr if isinstance(node.func, ast.Attribute) else (name or "").rsplit(".", 1)[-1]
        if short not in _HANDED_OVER:
            return False
        keywords = {kw.arg: kw.value for kw in node.keywords if kw.arg}
        target, rest = keywords.get("target"), None
        if short in _KEYED:
            target = keywords.get("key")
            rest = node.args[:1] if target is not None else None
        elif target is not None:
            given = keywords.get("args")
            rest = list(given.elts) if isinstance(given, (ast.Tuple, ast.List)) else []
        else:
            for i, arg in enumerate(node.args):
                if isinstance(arg, (ast.Name, ast.Attribute)) and self._runs(self.call_name(arg)) \
                        or self._possibly_runs(arg):
                    target, rest = arg, node.args[i + 1:]
                    break
        runner = self.call_name(target) if isinstance(target, (ast.Name, ast.Attribute)) else None
        if not self._runs(runner) and target is not None and rest and self._possibly_runs(target):
            runner = _KEPT  # d["a"], r[0]: a runner kept aside, handed over
        if not self._runs(runner) and runner != _KEPT or not rest:
            return False
        if short in ("map", "starmap", "imap", "imap_unordered", "map_async", *_KEYED):
            many = self.fold(rest[0])
            commands = many.value if many is not None and isinstance(many.value, (list, tuple)) else []
            for command in commands[:256]:
                if short == "starmap" and isinstance(command, (list, tuple)) and command:
                    command = command[0]
                self._run_with(runner, [ast.Constant(command)])
            return True
        self._run_with(runner, rest)
        return True

    def _method_caller(self, node: ast.Call) -> bool:
        """``operator.methodcaller("system", "ngrok tcp 22")(os)``: os.system("ngrok tcp 22")
        (the caller kept in a name too; the method a holder's)."""
        caller = self._getter(node.func, "operator.methodcaller")
        if caller is None or not caller.args or len(node.args) != 1:
            return False
        method = self.fold(caller.args[0])
        owner = self.call_name(node.args[0]) if isinstance(node.args[0], (ast.Name, ast.Attribute)) \
            else None
        runner = f"{owner}.{method.value}" if owner and method is not None and \
            isinstance(method.value, str) else None
        if not self._runs(runner) and method is not None and isinstance(method.value, str) and \
                self._possibly_runs(ast.Attribute(value=node.args[0], attr=method.value)):
            runner = _KEPT
        if not self._runs(runner) and runner != _KEPT:
            return False
        self._run_with(runner, caller.args[1:])
        return True

    def _getter(self, func: ast.expr, maker: str) -> ast.Call | None:
        """The ``maker(…)`` call (operator.attrgetter, methodcaller) ``func`` is, or is kept in."""
        if isinstance(func, ast.Name):
            func = self.getters.get(func.id)
        if isinstance(func, ast.Call) and self.call_name(func.func) == maker:
            return func
        return None

    def _runs(self, name: str | None) -> bool:
        name = _canonical(name)  # a member searched for in posix: posix.system is os.system
        return bool(name) and (name in _RUN_CALLS or name.startswith(_RUN_PREFIXES) or
                               name in self.runners)

    def _run_with(self, runner: str, arg_nodes: list) -> None:
        call = ast.Call(func=ast.Name(id="_", ctx=ast.Load()), args=list(arg_nodes), keywords=[])
        args = [self.fold(a) for a in arg_nodes]
        if runner == _KEPT:
            self._run_kept_aside(call, args)
            return
        if runner in self.runners:
            index = self.runners[runner]
            if len(args) > index and args[index] is not None:
                self.emit_run(args[index].value)
            return
        self._run_call(runner, call, args)

    def _streamed(self, node: ast.expr) -> bytes | str | None:
        """What ``io.BytesIO(constant)`` holds, folded as an unpickler's argument is."""
        if not (isinstance(node, ast.Call) and node.args and
                self.call_name(node.func) in _STREAMS):
            return None
        folded = self.fold(node.args[0]) or self._fold_long(node.args[0])
        if folded is not None and isinstance(folded.value, (bytes, bytearray, str)):
            return folded.value
        return None

    def _fold_long(self, node: ast.expr) -> _Folded | None:
        """An unpickler's or unmarshaller's argument folded past MAX_VALUE, out of the cell's
        MAX_LONG_FOLDING."""
        if self._long_budget <= MAX_VALUE:
            return None
        token = _VALUE_LIMIT.set(self._long_budget)
        try:
            folded = self.fold(node)
        finally:
            _VALUE_LIMIT.reset(token)
        if folded is not None and isinstance(folded.value, (str, bytes)):
            self._long_budget -= len(folded.value)
        return folded

    def _unmarshalled(self, data: bytes) -> None:
        """Code the cell unmarshals from a constant (``exec(marshal.loads(…))``), never loaded
        (marshal is not safe against hostile data): its strings, read by their type codes.
        Where they name a module and its function that starts programs (``os`` and
        ``system`` among a code object's names), its other strings are the commands it may run
        (read by its strings, not its bytecode: ``platform.system()`` beside ``import os``
        reads as os.system too)."""
        strings = _marshal_strings(bytes(data[:MAX_SOURCE]))
        present = set(strings)
        for call in sorted(_RUN_CALLS | _RUN_NAMES):
            module, _, attr = call.rpartition(".")
            if module in present and attr in present:
                self.emit("call", call)
                for text in strings:
                    if text not in (module, attr) and not text.startswith("<"):
                        self.emit_run(text)
                return

    def _unpickled(self, data) -> None:
        """A pickle the cell loads from a constant: what it calls as it loads (its GLOBAL and
        STACK_GLOBAL opcodes, read with ``pickletools``, never run) where that starts a
        program or runs code: ``cos\\nsystem\\n(S'ngrok tcp 22'…`` runs ``ngrok tcp 22``."""
        import pickletools

        if isinstance(data, str):
            data = data.encode("latin-1", "replace")
        strings: list[str] = []
        calls: list[str] = []
        try:
            for at, (opcode, arg, _) in enumerate(pickletools.genops(bytes(data[:MAX_SOURCE]))):
                if at > MAX_PICKLE_OPS:
                    break
                if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    calls.append(arg.replace(" ", ".", 1))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    calls.append(f"{strings.pop(-2)}.{strings.pop()}")
                elif isinstance(arg, (str, bytes)):
                    strings.append(_as_text(arg) or "")
        except Exception:  # a malformed pickle (it would fail to load there too): what was read
            pass
        for call in dict.fromkeys(_canonical(c.replace("posix.", "os.", 1)) for c in calls):
            if call in _RUN_CALLS or call.startswith(_RUN_PREFIXES):
                self.emit("call", call)
                for text in strings:
                    self.emit_run(text)
            elif call in ("exec", "eval"):
                self.emit("call", call)
                for text in strings:
                    self.read_code(text, ipython=False)

    def _run_call(self, name: str, node: ast.Call, args: list[_Folded | None]) -> None:
        command = None
        if name.startswith(_RUN_PREFIXES) or name in ("os.posix_spawn", "os.posix_spawnp"):
            # os.execv(path, argv), os.spawnv(mode, path, argv): the argv is the command
            candidates = [a for a in args if a is not None and isinstance(a.value, (list, tuple))]
            strings = [_as_text(a.value) if a is not None and isinstance(a.value, str) else UNKNOWN
                       for a in args if a is None or not isinstance(a.value, int)]
            if candidates:
                command = candidates[0].value
            elif name.rstrip("ep").endswith("l") and len(strings) >= 2:
                # os.execl(path, arg0, arg1…), os.spawnl(mode, path, arg0…): the args are argv
                command = strings[1:]
            else:
                command = " ".join(w for w in strings if w != UNKNOWN)
        elif args and args[0] is not None:
            command = args[0].value
        elif node.args and (choices := self._one_of(node.args[0])):
            self._run_each(choices)  # os.system(cmds[k]): each command the table holds
            return
        elif node.args:
            command = self.loose(node.args[0])  # f"tool --port {port}": the tool is known
        else:
            for kw in node.keywords:
                if kw.arg in ("args", "command", "cmd") and (choices := self._one_of(kw.value)):
                    self._run_each(choices)  # run(args=c, …) of a loop over a table
                    return
                if kw.arg in ("args", "command", "cmd"):
                    folded = self.fold(kw.value)
                    command = folded.value if folded else self.loose(kw.value)
        executable = next((self.fold(kw.value) for kw in node.keywords if kw.arg == "executable"), None)
        if isinstance(command, (list, tuple)) and command and executable is not None and \
                _as_text(executable.value):
            # Popen(["kworker", …], executable="./ngrok"): ngrok runs, named kworker
            self.emit_run([_as_text(executable.value), *command[1:]])
        script = self._shell_input(command, node)
        if script is not None:
            # run(["bash"], input="ls | wc -l"): the shell runs what it is given, through a
            # pipe (its streams are not the cell's, nor a socket dup2 put there)
            command = [_as_text(command[0] if isinstance(command, (list, tuple)) else
                                command.split()[0]), "-c", script]
        if command:
            # a string without shell=True execs one word: split anyway, as a shell would
            # (the cell may pass shell=True through a variable)
            self.emit_run(command)

    def _shell_input(self, command, node: ast.Call) -> str | None:
        """The script given as ``input=`` to a shell started with none of its own."""
        if isinstance(command, str):
            words = command.split()
        elif isinstance(command, (list, tuple)):
            words = [_as_text(w) or "" for w in command]
        else:
            return None
        if not 1 <= len(words) <= 2 or not _SHELL.match(words[0]) or words[1:] not in ([], ["-s"]):
            return None
        folded = next((self.fold(kw.value) for kw in node.keywords if kw.arg == "input"), None)
        return (_as_text(folded.value) or None) if folded is not None else None

    def _ipython_call(self, method: str, args: list[_Folded | None]) -> None:
        values = [_as_text(a.value) if a else None for a in args]
        if method == "magic" and values and values[0]:  # ip.magic("system ngrok tcp 22")
            name, _, rest = values[0].lstrip("%").partition(" ")
            method, values = "run_line_magic", [name, rest]
        if method in ("system", "getoutput", "system_raw", "system_piped") and values and values[0]:
            self.emit_run(values[0])
        elif method in ("run_cell", "run_cell_async", "ex", "ev", "run_code", "transform_cell") and \
                values and values[0]:
            self.read_code(values[0], ipython=method in ("run_cell", "run_cell_async"))
        elif method == "define_macro" and len(values) >= 2 and values[0] and values[1]:
            # ip.define_macro("m", "!ngrok tcp 22"): a later cell `m` runs that code
            self.names[f"%macro {values[0]}"] = _Folded(values[1][:MAX_VALUE], False)
        elif method in ("safe_execfile", "safe_execfile_ipy", "safe_run_module") and values and \
                values[0] and self.memory is not None:
            name = shell.base(values[0])
            code = self.memory.files.get(name) or self.memory.files.get(name + ".py")
            if code:
                self.read_code(code, ipython=method == "safe_execfile_ipy")
        elif method == "run_line_magic" and len(values) >= 2 and values[0] in _SHELL_MAGICS:
            self.emit_run(values[1] or "")
        elif method == "run_line_magic" and len(values) >= 2 and values[0] in ("cd", "pushd"):
            self.change_folder(self._expand(values[1] or "~").strip().strip("'\"") or "~")
        elif method == "run_line_magic" and len(values) >= 2 and values[0] == "run" and values[1]:
            # %run script.py args: the script runs in the kernel, as `python script.py args`
            words = [w for w in self._expand(values[1]).split() if w not in ("-i", "-e", "-t")]
            if words and words[0] != "-m":
                self.started(shell.split_argv(["python", *words], self.cwd))
            elif len(words) > 1:
                self.started(shell.split_argv(["python", *words], self.cwd))
        elif method == "run_line_magic" and len(values) >= 2 and values[0] == "set_env" or \
                method == "run_line_magic" and len(values) >= 2 and values[0] == "env" and \
                values[1] and re.match(r"\s*[A-Za-z_]\w*\s*[= ]\s*\S", values[1]):
            # %env T=xmrig, %set_env T xmrig
            parts = re.split(r"\s*[= ]\s*", (values[1] or "").strip(), maxsplit=1)
            key, value = parts[0], parts[1] if len(parts) > 1 else ""
            self._set_env(key, _Folded(self._expand(value), False) if value else None)
        elif method == "run_line_magic" and len(values) >= 2 and values[0] == "alias" and values[1]:
            # %alias m ./xmrig -o p:3333 — then %m runs it
            parts = values[1].split(None, 1)
            if len(parts) == 2:
                self.names[f"%alias {parts[0]}"] = _Folded(parts[1].replace("%s", "").replace("%l", ""),
                                                           False)
        elif method == "run_line_magic" and len(values) >= 2 and \
                f"%alias {values[0]}" in self.names:
            alias = _as_text(self.names[f"%alias {values[0]}"].value) or ""
            self.emit_run(f"{alias} {values[1] or ''}".strip())
        elif method == "run_line_magic" and len(values) >= 2 and values[0] in _CODE_MAGICS:
            self.read_code(values[1] or "")
        elif method == "run_cell_magic" and len(values) >= 3 and values[2]:
            magic, line = values[0], values[1] or ""
            shell_cell = magic in _SHELL_MAGICS and (
                magic != "script" or shell.base((line.split() or [""])[0]) in shell.SHELLS)
            if magic in _CODE_MAGICS or magic == "script" and shell.PYTHONS.match(
                    shell.base((line.split() or [""])[0])):
                self.read_code(values[2])
                return
            interpreter = magic if magic in _SCRIPT_MAGICS else \
                shell.base((line.split() or [""])[0]) if magic == "script" else ""
            if interpreter in _SCRIPT_MAGICS:  # %%perl, %%ruby, %%script node: their system()
                for command in _script_runs(values[2]):
                    self.emit_run(command)
            if magic in ("writefile", "file") and self.memory is not None and line.split():
                name = shell.base(line.split()[-1])
                self.memory.files[name] = values[2][:MAX_SOURCE]
            body = values[2]
            if shell_cell:  # here-documents are input, not commands (a shell's own is run)
                body, documents = shell.heredocs(body)
                body = "\n".join([body, *(d for k, h, d in documents if k == "shell")])
                for kind, name, document in documents:
                    if kind == "file":  # cat > x.sh <<EOF: remembered like %%writefile
                        self._wrote(name, document)
            for body_line in body.splitlines():
                if body_line.strip() and not body_line.lstrip().startswith("#"):
                    if shell_cell:
                        self.emit_run(body_line, split=False)
                    else:
                        self.emit("text", body_line)
            if shell_cell:  # one shell runs the whole body: cd and variables carry over
                self.started(self.split_shell(self._expand(values[2]), self.cwd))

    def generic_expression(self, node):
        """Emit the largest constant sub-expressions; look inside the rest."""
        for child in ast.iter_child_nodes(node):
            self.visit(child)

    def generic_visit(self, node):
        if isinstance(node, ast.expr) and not isinstance(node, (ast.Name, ast.Call)):
            folded = self.fold(node)
            if folded is not None:
                self.emit_value(folded)
                return
            if self._long_chain(node):
                return
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
                self._visit_added(node)
                return
        super().generic_visit(node)

    def _visit_added(self, node: ast.BinOp) -> None:
        """``b'{"job_' + b'id": "' + j + b'", "non' + b'ce": "'``: a sum of texts with
        parts not known: each run of known parts read as the one text Python joins them
        into (read left to right, ``(a + j) + b + c`` would leave ``b`` and ``c`` apart);
        the unknown parts visited as they are. Read once, whatever its length."""
        run: list = []
        for operand in _added_operands(node):
            folded = self.fold(operand)
            if folded is not None and isinstance(folded.value, (str, bytes)) and \
                    (not run or type(run[0].value) is type(folded.value)):
                run.append(folded)
                continue
            self._emit_run_of_texts(run)
            run = [folded] if folded is not None and isinstance(folded.value, (str, bytes)) else []
            if not run:
                self.visit(operand)
        self._emit_run_of_texts(run)

    def _emit_run_of_texts(self, run: list) -> None:
        """A run of known texts: joined, and each as it was read before (no fact lost)."""
        if run:
            joined = run[0].value[:0].join(f.value for f in run)[:MAX_VALUE]
            self.emit_value(_Folded(joined, len(run) > 1 or run[0].hidden))
        for folded in run if len(run) > 1 else ():
            self.emit_value(folded)

    def _long_chain(self, node: ast.expr) -> bool:
        """``r[0][0]…[0]`` past MAX_CHAIN items that did not fold: its keys and its root read
        once each (folding every shorter chain in turn costs the square of its length)."""
        chain = []
        while isinstance(node, ast.Subscript) and len(chain) <= MAX_CHAIN * 64:
            chain.append(node.slice)
            node = node.value
        if len(chain) <= MAX_CHAIN:
            return False
        for key in chain:
            self.visit(key)
        self.visit(node)
        return True

    def visit_Expr(self, node):
        """A cell that names a macro runs the macro's code."""
        if isinstance(node.value, ast.Name) and f"%macro {node.value.id}" in self.names:
            code = _as_text(self.names[f"%macro {node.value.id}"].value)
            if code and self.nesting < MAX_NESTING:
                self.read_code(code)
        self.generic_visit(node)

    def visit_Name(self, node):
        pass  # a variable's value was emitted where it was assigned

    # ------------------------------------------------------------ folding

    def _bind_loose(self, name: str, value: ast.expr) -> None:
        """``cmd = f"jprq {port}"``, ``cmd = "jprq %s" % port``: a command built from a
        template with parts only known when it runs, kept for the call that runs ``cmd``."""
        if isinstance(value, ast.Call) and len(value.args) == 1 and \
                (self.call_name(value.func) or "").endswith("Template"):
            self._templates[name] = value.args[0]  # t = Template("ngrok $p"); t.substitute(…)
            return
        if not self._loose_shaped(value):
            return  # (not every unfolded value read again: a call's fold can be dear)
        text = self.loose(value)
        if isinstance(text, list) and any(isinstance(w, str) and w != UNKNOWN for w in text):
            self._loose_names[name] = text  # parts = ["ngrok", "tcp", str(port)]
        elif isinstance(text, str) and text.replace(UNKNOWN, "").strip():
            self._loose_names[name] = text

    def loose(self, node: ast.expr, depth: int = 0):
        """A command with parts not known before it runs: the known words kept, each unknown
        part a placeholder (``f"code-server --port {port}"`` -> ``code-server --port …``; a
        ``%`` or ``.format`` template alike, and a name bound to one)."""
        if depth == 0:
            self._loose_steps = self._loose_inlined = 0
        self._loose_steps += 1
        if depth > 20 or self._loose_steps > MAX_LOOSE_STEPS:
            return UNKNOWN
        folded = self.fold(node)
        if folded is not None:
            return folded.value
        if isinstance(node, ast.NamedExpr):
            return self.loose(node.value, depth + 1)  # run((c := "ngrok %s" % p))
        if isinstance(node, ast.Name) and node.id in self._loose_names:
            return self._loose_names[node.id]
        filled = self._filled_template(node, depth)
        if filled is not None:
            return filled[:MAX_VALUE]
        returned = self._loose_returned(node, depth)
        if returned is not None:  # mk(port) of mk = lambda p: "ngrok tcp %d" % p
            return returned
        method = self._loose_method(node, depth)
        if method is not None:
            return method
        if isinstance(node, ast.JoinedStr):
            return "".join(_as_text(self.loose(v.value if isinstance(v, ast.FormattedValue)
                                                else v, depth + 1)) or UNKNOWN
                           for v in node.values)[:MAX_VALUE]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            # the sum's operands each read once (not each part sum folded again: n²)
            parts = [self.loose(o, depth + 1) for o in _added_operands(node)]
            if all(isinstance(p, list) for p in parts):
                return [i for p in parts for i in p]
            return "".join(_as_text(p) or UNKNOWN for p in parts)[:MAX_VALUE]
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.loose(e, depth + 1) for e in node.elts[:256]]
            if len(items) == 1 and isinstance(items[0], str) and " " in items[0]:
                return items[0]  # Popen([cmd], shell=True): the one string is a shell line
            return [i if isinstance(i, str) else UNKNOWN for i in items]
        return UNKNOWN

    def _loose_text(self, node: ast.expr, depth: int) -> str | None:
        """``node`` read as one text with its unknown parts placeholders, or None."""
        value = self.loose(node, depth + 1)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return _as_text(value) if isinstance(value, (str, bytes)) else None

    def _loose_shaped(self, node: ast.expr) -> bool:
        """A value that may hold a command's known words when its other parts are not known:
        an f-string, a template filled by ``%``, ``.format``, ``.format_map``,
        ``Template(…).substitute`` or ``.replace``, a ``+`` with text, a join, a helper
        returning one, a name bound to one (whatever holds the template: a constant, an
        item, a variable)."""
        if isinstance(node, ast.NamedExpr):
            return self._loose_shaped(node.value)
        if isinstance(node, ast.Name):
            return node.id in self._loose_names
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return any(_is_text(n) or self._loose_shaped(n) for n in (node.left, node.right))
        if isinstance(node, (ast.List, ast.Tuple)):
            return any(_is_text(e) for e in node.elts[:256])
        if isinstance(node, ast.Call) and self._template_spelled(node) is not node:
            return True  # str.format(t, x), operator.mod(t, x)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return node.func.attr in _LOOSE_METHODS
        if isinstance(node, ast.Call):
            return isinstance(node.func, ast.Lambda) or isinstance(node.func, ast.Name) and (
                node.func.id in self._lambdas or node.func.id in self.pure or node.func.id == "str")
        return isinstance(node, ast.JoinedStr) or \
            isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod)

    def _filled_template(self, node: ast.expr, depth: int) -> str | None:
        """``"…%s…" % x``, ``"…{}…".format(x)``, ``.format_map(d)``, ``Template("…$x…")
        .substitute(x=…)``: the template (constant, or itself read loosely: an item, a
        variable, a nested template) with each field filled by its value where that is
        known (``"%s tcp %d" % ("ngrok", port)``), a placeholder where not."""
        positional, named = [], {}
        node = self._template_spelled(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            template, fields = self._loose_text(node.left, depth), _PERCENT_FIELD
            positional, named = _percent_values(node.right)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("format", "format_map"):
            template, fields = self._loose_text(node.func.value, depth), _FORMAT_FIELD
            if node.func.attr == "format":
                positional = node.args
                named = {k.arg: k.value for k in node.keywords if k.arg}
            elif node.args:
                named = _mapping_spelled(node.args[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("substitute", "safe_substitute") and \
                (text := self._template_text(node.func.value)) is not None:
            template, fields = self._loose_text(text, depth), _DOLLAR_FIELD
            named = _mapping_spelled(node.args[0]) if node.args else {}
            named.update({k.arg: k.value for k in node.keywords if k.arg})
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "replace" and len(node.args) >= 2:
            return self._loose_replaced(node, depth)
        else:
            return None
        if template is None:
            return None
        order = iter(range(len(positional)))

        def fill(match: re.Match) -> str:
            if match.group(0) in _TEMPLATE_ESCAPES:
                return _TEMPLATE_ESCAPES[match.group(0)]
            value = _field_value(match.group(0), positional, named, order)
            return (self._loose_text(value, depth) if value is not None else None) or UNKNOWN
        return fields.sub(fill, template)

    def _template_text(self, node: ast.expr) -> ast.expr | None:
        """The text of ``Template(text)``, spelled there or bound to a name, or None."""
        if isinstance(node, ast.Name):
            return self._templates.get(node.id)
        if isinstance(node, ast.Call) and len(node.args) == 1 and \
                (self.call_name(node.func) or "").endswith("Template"):
            return node.args[0]
        return None

    def _template_spelled(self, node: ast.expr) -> ast.expr:
        """``str.format(t, x)``, ``operator.mod(t, x)``, ``t.__mod__(x)`` as ``t.format(x)``
        and ``t % x`` are spelled."""
        if not isinstance(node, ast.Call) or node.keywords and not (
                isinstance(node.func, ast.Attribute) and node.func.attr == "format"):
            return node
        name = self.call_name(node.func) or ""
        if name in ("str.format", "str.format_map") and node.args:
            return ast.Call(func=ast.Attribute(value=node.args[0], attr=name[4:], ctx=ast.Load()),
                            args=node.args[1:], keywords=node.keywords)
        if name in ("operator.mod", "operator.__mod__", "str.__mod__") and len(node.args) == 2:
            return ast.BinOp(left=node.args[0], op=ast.Mod(), right=node.args[1])
        if isinstance(node.func, ast.Attribute) and node.func.attr == "__mod__" and \
                len(node.args) == 1:
            return ast.BinOp(left=node.func.value, op=ast.Mod(), right=node.args[0])
        return node

    def _loose_replaced(self, node: ast.Call, depth: int) -> str | None:
        """``t.replace("PORT", str(port))``: the template with the part replaced, by its
        value where known, a placeholder where not."""
        base = self._loose_text(node.func.value, depth)
        old = self.fold(node.args[0])
        if base is None or old is None or not isinstance(old.value, str) or not old.value:
            return None
        return base.replace(old.value, self._loose_text(node.args[1], depth) or UNKNOWN)

    def _loose_returned(self, node: ast.expr, depth: int):
        """``mk(port)`` of the cell's ``mk = lambda p: …`` or ``def mk(p): return …``: what
        it returns read loosely, each parameter bound to its argument read in the caller's
        place (a constant, a command with unknown parts, or unknown); None where not such a
        call, or one whose arguments are all known (its fold failed for another reason)."""
        if not isinstance(node, ast.Call) or self._loose_inlined >= MAX_LOOSE_INLINED:
            return None
        if isinstance(node.func, ast.Lambda):
            function, returned = node.func, node.func.body
        elif isinstance(node.func, ast.Name) and node.func.id in self._lambdas:
            function = self._lambdas[node.func.id]
            returned = function.body
        elif isinstance(node.func, ast.Name) and node.func.id in self.pure:
            function = self.pure[node.func.id]
            returned = function.body[-1].value
        else:
            return None
        given = self._arguments_spelled(function, node)
        if given is None:
            return None
        folded = {name: self.fold(value) for name, value in given.items()}
        if None not in folded.values():
            return None  # all its arguments known, and still no fold: read no deeper (n^k)
        self._loose_inlined += 1
        texts = {name: self._loose_text(value, depth) for name, value in given.items()
                 if folded[name] is None}
        saved = {name: (self.names.get(name), self._loose_names.get(name)) for name in given}
        for name in given:
            self.names.pop(name, None)
            self._loose_names.pop(name, None)
            if folded[name] is not None:
                self.names[name] = folded[name]
            elif texts[name] and texts[name].replace(UNKNOWN, "").strip():
                self._loose_names[name] = texts[name]
        try:
            return self.loose(returned, depth + 1)
        finally:
            for name, (value, text) in saved.items():
                self.names.pop(name, None)
                self._loose_names.pop(name, None)
                if value is not None:
                    self.names[name] = value
                if text is not None:
                    self._loose_names[name] = text

    def _loose_method(self, node: ast.expr, depth: int):
        """``sep.join([...])``, ``str(x)``, ``x.strip()``, ``x.split()`` of a command with
        parts not known yet: the same with its known words."""
        if not isinstance(node, ast.Call):
            return None
        func = node.func
        if isinstance(func, ast.Name) and func.id == "str" and len(node.args) == 1 and \
                func.id not in self.names:
            return self._loose_text(node.args[0], depth)
        if not isinstance(func, ast.Attribute):
            return None
        if func.attr == "join" and len(node.args) == 1:
            separator = self.fold(func.value)
            items = self.loose(node.args[0], depth + 1)
            if separator is None or not isinstance(separator.value, str) or \
                    not isinstance(items, list):
                return None
            return separator.value.join(i if isinstance(i, str) else UNKNOWN for i in items)
        if func.attr in ("strip", "split") and not node.args:
            text = self._loose_text(func.value, depth)
            return None if text is None else text.strip() if func.attr == "strip" else \
                text.split()
        return None

    def call_name(self, func: ast.expr) -> str | None:
        """The dotted name a call goes to, through import aliases (``sp.run`` -> subprocess.run),
        the builtins module, ``sys.modules[...]``, ``vars(os)[...]`` and a C library's handle
        (``ctypes.CDLL(None).system`` is ``os.system``)."""
        return _canonical(self._call_name(func))

    def _call_name(self, func: ast.expr) -> str | None:
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if isinstance(func, ast.Subscript) and isinstance(func.value, ast.Name):
            key = self.fold(func.slice)  # d["go"] where d = {"go": os.system}
            table = self.aliases.get(f"{func.value.id}[{key.value!r}]") if key is not None else None
            if table:
                return ".".join([table, *reversed(parts)])
        func = self._item_got(func)  # vars(os).get("system"): vars(os)["system"]
        if isinstance(func, ast.Subscript):  # sys.modules["os"].system, vars(os)["system"]
            key = self.fold(func.slice)
            key = key.value if key is not None and isinstance(key.value, str) else None
            if self._is_namespace(func.value):  # globals()["os"], a frame's f_globals["os"]
                if not key or not key.isidentifier():
                    return None
                head = self._call_name(ast.Name(id=key, ctx=ast.Load()))
                return ".".join([head, *reversed(parts)])
            owner = self.call_name(func.value) if isinstance(func.value, (ast.Name, ast.Attribute)) \
                else None
            searched = self._members_mapping(func.value)
            if searched is not None:  # vars(os), dict(inspect.getmembers(os)): os's members
                owner = searched
            elif owner and owner.endswith(".__dict__"):
                owner = owner[:-len(".__dict__")]
            elif owner == "sys.modules":
                owner = None if key is None else ""
            else:
                return None
            if key is None or owner is None:
                return None
            return ".".join([p for p in (owner, key) if p] + list(reversed(parts)))
        reduced = self._reduced_getattr(func) if isinstance(func, ast.Call) else None
        if reduced:  # functools.reduce(getattr, ["system"], os): os.system
            return ".".join([reduced, *reversed(parts)])
        if isinstance(func, ast.Call) and parts:
            if _calls_chained(func.func, MAX_NAMED_CHAIN):
                return None  # df.pipe(f).pipe(g)…: no module's member (named anew at each link)
            called = self.call_name(func.func)
            module = self.fold(func.args[0]) if func.args else None
            if called in ("__import__", "importlib.import_module") and module is not None \
                    and isinstance(module.value, str):
                return ".".join([module.value, *reversed(parts)])
            if called in _DLL_OPENERS:  # ctypes.CDLL(None).system: the C library's system()
                return ".".join([LIBC, *reversed(parts)])
            return None
        if isinstance(func, ast.Call) and not parts and isinstance(func.func, ast.Name) and \
                func.func.id in self._returned_runners:
            return self._returned_runners[func.func.id]  # mk()("…") where mk returns a runner
        if isinstance(func, ast.Call) and not parts and isinstance(func.func, ast.Attribute) \
                and isinstance(func.func.value, ast.Name) and func.args \
                and func.func.attr in ("get", "setdefault", "pop"):
            # d.get("go")(...), d.setdefault("go", os.system)(...): the table's item (or the
            # default given, a function that starts programs)
            key = self.fold(func.args[0])
            item = self.aliases.get(f"{func.func.value.id}[{key.value!r}]") if key else None
            default = self._runner_in(func.args[1]) if len(func.args) > 1 else None
            return item or default
        getter = self._getter(func.func, "operator.attrgetter") if isinstance(func, ast.Call) \
            else None
        if getter is not None and len(getter.args) == 1 and len(func.args) == 1:
            attr = self.fold(getter.args[0])  # operator.attrgetter("system")(os)
            owner = self.call_name(func.args[0]) if isinstance(func.args[0], (
                ast.Name, ast.Attribute)) else None
            if owner and attr is not None and isinstance(attr.value, str):
                return ".".join([owner, attr.value, *reversed(parts)])
            return None
        if isinstance(func, ast.Call) and not parts and self.call_name(func.func) == "eval" and \
                len(func.args) == 1:  # eval("os.system")(...): the name it evaluates to
            text = self.fold(func.args[0])
            try:
                named = ast.parse(_as_text(text.value) or "", mode="eval").body if text else None
            except (SyntaxError, ValueError):
                named = None
            return self._call_name(named) if isinstance(named, (ast.Name, ast.Attribute)) \
                else None
        if isinstance(func, ast.Call) and not parts:  # getattr(os, "system")(...)
            pair = func.args
            if isinstance(func.func, ast.Attribute) and func.func.attr == "__getattribute__" \
                    and len(func.args) == 1:
                pair = [func.func.value, func.args[0]]  # os.__getattribute__("system")
            if (self.call_name(func.func) in ("getattr", "object.__getattribute__") or
                    pair is not func.args) and len(pair) == 2:
                owner = self.call_name(pair[0]) if isinstance(pair[0], (
                    ast.Name, ast.Attribute, ast.Call, ast.Subscript)) else None
                attr = self.fold(pair[1])
                if owner and attr is not None and isinstance(attr.value, str):
                    return f"{owner}.{attr.value}"
            return None
        if isinstance(func, ast.NamedExpr) and not parts:  # (f := os.system)("…")
            return self._call_name(func.value)
        if not isinstance(func, ast.Name):
            return None
        head = self.aliases.get(func.id, func.id)
        return ".".join([head, *reversed(parts)])

    def _is_namespace(self, node: ast.expr) -> bool:
        """The cell's own variables as a table: ``globals()``, ``locals()``, ``vars()``, a
        frame's ``f_globals``/``f_locals``, ``vars(__main__)``, ``__main__.__dict__``."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id) == NAMESPACE  # g = globals()
        if isinstance(node, ast.NamedExpr):
            return self._is_namespace(node.value)  # (g := globals())["r"] = …
        if isinstance(node, ast.Call) and len(node.args) in (2, 3) and \
                self.call_name(node.func) == "getattr":
            return self._namespace_attribute(node)
        if isinstance(node, ast.IfExp):  # (globals() if c else {})["r"] = …: either may be it
            return self._is_namespace(node.body) or self._is_namespace(node.orelse)
        if isinstance(node, ast.BoolOp):  # ({} and globals())["r"] = …
            return any(self._is_namespace(value) for value in node.values)
        if isinstance(node, ast.Name) and node.id == "__builtins__" and \
                node.id not in self.names and node.id not in self.aliases:
            return True  # a dict in a module that is not __main__ (exec of a module's code)
        if isinstance(node, ast.Call) and not node.keywords and \
                self.call_name(node.func) in ("globals", "locals", "vars"):
            return not node.args or len(node.args) == 1 and self._names_module(node.args[0])
        if isinstance(node, ast.Attribute) and node.attr == "__dict__":
            return self._names_module(node.value)
        return isinstance(node, ast.Attribute) and node.attr in ("f_globals", "f_locals")

    def _namespace_attribute(self, node: ast.Call) -> bool:
        """``getattr(__main__, "__dict__")``; with a default, either: ``getattr(__builtins__,
        "__dict__", __builtins__)`` is the builtins' table whether a module or a dict."""
        if self._key(node.args[1]) == "__dict__" and self._names_module(node.args[0]):
            return True
        return len(node.args) == 3 and self._is_namespace(node.args[2])

    def _names_module(self, node: ast.expr) -> bool:
        """A module whose members are names the cell calls bare: ``__main__`` (however
        reached) or ``builtins`` (a builtin is found when no variable has the name)."""
        return self._main_module(node) or isinstance(node, (ast.Name, ast.Attribute)) and \
            self.call_name(node) in ("builtins", "__builtins__")

    def _item_got(self, node: ast.expr) -> ast.expr:
        """``m.get(k)`` or ``m.__getitem__(k)`` of a table of a module's members, of the cell's
        variables or of sys.modules, as ``m[k]`` (its default aside); an item of a dict
        comprehension as its value for that key (_comprehension_item); else ``node``."""
        item = self._comprehension_item(node)
        if item is not None:
            return item
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and
                node.func.attr in ("get", "__getitem__") and 1 <= len(node.args) <= 2 and
                not node.keywords) or self._getting:
            return node  # not one, or one inside another's table (linear: no chain re-read)
        table = node.func.value
        if not _may_be_members_table(table):
            return node
        self._getting = True
        try:
            owner = self.call_name(table) if isinstance(table, (ast.Name, ast.Attribute)) \
                else None
            if self._members_mapping(table) is None and not self._is_namespace(table) and \
                    owner != "sys.modules" and not (owner or "").endswith(".__dict__"):
                return node
        finally:
            self._getting = False
        return ast.Subscript(value=table, slice=node.args[0], ctx=ast.Load())

    def _comprehension_item(self, node: ast.expr) -> ast.expr | None:
        """An item of a comprehension the cell spells the rows of, as its expression for that
        row, the loop variables spelled as the row's items: ``{n: getattr(os, n) for n in
        ["system"]}["system"]`` (``.get`` alike) the last row of that key's, ``[getattr(os, k)
        for k in ks][0]`` the first row, ``next(… for …)`` too (``getattr(os, "system")``).
        None where a row's key (or filter) is not known: which row it is cannot be told."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("get", "__getitem__") and len(node.args) == 1 and \
                not node.keywords:
            node = ast.Subscript(value=node.func.value, slice=node.args[0], ctx=ast.Load())
        if isinstance(node, ast.Call) and len(node.args) == 2 and not node.keywords and \
                self.call_name(node.func) in ("operator.getitem", "operator.__getitem__"):
            node = ast.Subscript(value=node.args[0], slice=node.args[1], ctx=ast.Load())
        if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and \
                isinstance(node.func, ast.Call) and len(node.func.args) == 1 and \
                self.call_name(node.func.func) == "operator.itemgetter":
            node = ast.Subscript(value=node.args[0], slice=node.func.args[0], ctx=ast.Load())
        if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and \
                isinstance(node.func, ast.Name) and node.func.id == "next" and \
                node.func.id not in self.functions:
            node = ast.Subscript(value=node.args[0], slice=ast.Constant(0), ctx=ast.Load())
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call) and \
                isinstance(node.value.func, ast.Name) and node.value.func.id == "dict" and \
                len(node.value.args) == 1 and isinstance(node.value.args[0], ast.DictComp) and \
                not node.value.keywords:  # dict({…}): the same table
            node = ast.Subscript(value=node.value.args[0], slice=node.slice, ctx=ast.Load())
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and \
                node.value.id in self._comprehensions:  # t = {n: getattr(os, n) for …}; t[…]
            node = ast.Subscript(value=self._comprehensions[node.value.id], slice=node.slice,
                                 ctx=ast.Load())
        if not isinstance(node, ast.Subscript) or not isinstance(
                node.value, (ast.DictComp, ast.ListComp, ast.GeneratorExp)) or \
                len(node.value.generators) > 3 or \
                any(loop.is_async for loop in node.value.generators):
            return None
        table, key = node.value, self.fold(node.slice)
        combos = self._comprehension_rows(table.generators) if key is not None else None
        if not combos:
            return None
        found = []
        for spelled, bound in combos:
            row_key = self._fold_with(bound, table.key, 0) if isinstance(table, ast.DictComp) \
                else None
            if isinstance(table, ast.DictComp) and row_key is None:
                return None
            if row_key is None or row_key.value == key.value:
                found.append(_spelled(table.value if isinstance(table, ast.DictComp)
                                      else table.elt, spelled))
        if isinstance(table, ast.DictComp):
            return found[-1] if found else None
        index = key.value
        return found[index] if type(index) is int and -len(found) <= index < len(found) else None

    def _comprehension_rows(self, loops: list[ast.comprehension]) -> list[tuple] | None:
        """The rows a comprehension's loops make, outer first (``for m in [os] for n in
        ["system"]``: the inner loop's table spelled with the outer's row), those its filters
        drop left out: (loop variables spelled as nodes, those folded) for each, at most
        MAX_INLINED_ITEMS. None where a table or a filter is not known."""
        combos: list[tuple[dict, dict]] = [({}, {})]
        for loop in loops:
            names = _loop_names(loop.target)
            if not names:
                return None
            more = []
            for spelled, bound in combos:
                rows = self._rows(_spelled(loop.iter, spelled), len(names))
                if not rows or len(more) + len(rows) > MAX_INLINED_ITEMS:
                    return None
                for row in rows:
                    row_spelled = {**spelled, **{n: _node_of(i.value) if isinstance(i, _Folded)
                                                 else i for n, i in zip(names, row)}}
                    row_bound = {**bound, **{n: i if isinstance(i, _Folded) else self.fold(i)
                                             for n, i in zip(names, row)}}
                    row_bound = {n: f for n, f in row_bound.items() if f is not None}
                    kept = [self._holds(test, row_bound) if not self._str_classes else None
                            for test in loop.ifs]  # (as _filtered_out: S.__ne__ may say anything)
                    if None in kept:
                        return None
                    if all(kept):
                        more.append((row_spelled, row_bound))
            combos = more
        return combos

    def _namespace_item(self, node: ast.expr) -> ast.Name | None:
        """``globals()["d"]``, ``sys._getframe().f_locals["d"]``: the variable d."""
        node = self._item_got(node)
        if not isinstance(node, ast.Subscript) or not self._is_namespace(node.value):
            return None
        key = self._key(node.slice)
        return ast.Name(id=key, ctx=ast.Load()) if isinstance(key, str) and key.isidentifier() \
            else None

    def _members_mapping(self, node: ast.expr) -> str | None:
        """The module (or object) whose members ``node`` is a table of, by name: ``vars(os)``,
        ``dict(inspect.getmembers(os))``, ``dict(vars(os).items())``, ``os.__dict__.copy()``."""
        if isinstance(node, ast.Attribute) and node.attr == "__dict__":
            owner = node.value
        elif isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and \
                self.call_name(node.func) == "vars":
            owner = node.args[0]
        elif isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and \
                self.call_name(node.func) == "dict":
            return self._members_mapping(node.args[0]) or self._member_pairs(node.args[0])
        elif isinstance(node, ast.Call) and not node.args and \
                isinstance(node.func, ast.Attribute) and node.func.attr == "copy":
            return self._members_mapping(node.func.value)
        else:
            return None
        return self.call_name(owner) if isinstance(owner, (ast.Name, ast.Attribute)) or \
            isinstance(owner, ast.Subscript) and self._item_got(owner) is owner else None

    def _member_pairs(self, node: ast.expr) -> str | None:
        """The module whose (name, member) pairs ``node`` gives: ``inspect.getmembers(os)``,
        ``vars(os).items()``, ``os.__dict__.items()``."""
        if not isinstance(node, ast.Call):
            return None
        if isinstance(node.func, ast.Attribute) and node.func.attr == "items" and not node.args:
            return self._members_mapping(node.func.value)
        if self.call_name(node.func) == "inspect.getmembers" and node.args and \
                isinstance(node.args[0], (ast.Name, ast.Attribute, ast.Subscript)):
            return self.call_name(node.args[0])
        return None

    def _member_names(self, node: ast.expr) -> str | None:
        """The module whose members' names ``node`` gives: ``dir(os)``, ``vars(os)``,
        ``os.__dict__``, ``vars(os).keys()``."""
        if isinstance(node, ast.Call) and len(node.args) == 1 and \
                self.call_name(node.func) == "dir" and \
                isinstance(node.args[0], (ast.Name, ast.Attribute, ast.Subscript)):
            return self.call_name(node.args[0])
        if isinstance(node, ast.Call) and not node.args and \
                isinstance(node.func, ast.Attribute) and node.func.attr == "keys":
            return self._members_mapping(node.func.value)
        return self._members_mapping(node)

    def _reduced_getattr(self, node: ast.Call) -> str | None:
        """``functools.reduce(getattr, ["path", "join"], os)``: ``os.path.join``."""
        if len(node.args) != 3 or node.keywords or \
                self.call_name(node.func) not in ("functools.reduce", "_functools.reduce") or \
                not isinstance(node.args[0], ast.Name) or \
                self.call_name(node.args[0]) != "getattr" or \
                not isinstance(node.args[2], (ast.Name, ast.Attribute)):
            return None
        names = self.fold(node.args[1])
        owner = self.call_name(node.args[2])
        if names is None or not isinstance(names.value, (list, tuple)) or not owner or \
                not all(isinstance(n, str) and n.isidentifier() for n in names.value):
            return None
        return ".".join([owner, *names.value])

    def fold(self, node: ast.expr, depth: int = 0) -> _Folded | None:
        if depth > 50:
            return None
        try:
            return self._fold(node, depth + 1)
        except (ValueError, TypeError, binascii.Error, UnicodeError, OverflowError,
                MemoryError, LookupError, RecursionError):
            return None

    def _fold(self, node, depth):
        if isinstance(node, ast.Constant):
            value = node.value
            ok = isinstance(value, (str, bytes, int)) and not isinstance(value, bool)
            return _Folded(value, False) if ok else None
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        if isinstance(node, (ast.NamedExpr, ast.Await)):
            return self.fold(node.value, depth)  # os.system(c := "…"), await anext(g())
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return self.names.get(f"{node.value.id}.{node.attr}")  # a class's constant
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call) and \
                isinstance(node.value.func, ast.Name):
            return self.names.get(f"{node.value.func.id}.{node.attr}")  # an instance's: K().c
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.fold(e, depth) for e in node.elts]
            if any(i is None for i in items):
                return None
            return _Folded([i.value for i in items], any(i.hidden for i in items))
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                folded = self.fold(value.value if isinstance(value, ast.FormattedValue) else value,
                                   depth)
                if folded is None or _as_text(folded.value) is None:
                    return None
                parts.append(_as_text(folded.value))
            return _Folded(_cap("".join(parts)), len(node.values) > 1)
        if isinstance(node, ast.BinOp):
            return self._fold_binop(node, depth)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = self.fold(node.operand, depth)
            return _Folded(-operand.value, False) if operand and type(operand.value) is int else None
        if isinstance(node, (ast.GeneratorExp, ast.ListComp)) and len(node.generators) == 1 and \
                self._generated(node.generators[0].iter):  # [c for c in g()]
            loop = node.generators[0]
            same = isinstance(node.elt, ast.Name) and _loop_names(loop.target) == [node.elt.id]
            return self._fold_generated("list", loop.iter, depth) if same and not loop.ifs \
                else None
        if isinstance(node, (ast.GeneratorExp, ast.ListComp)):
            return self._fold_chr_comprehension(node, depth)
        if isinstance(node, ast.DictComp):
            return self._fold_dict_comprehension(node, depth)
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
            return self._fold_slice(node, depth)
        if isinstance(node, ast.Dict) and None not in node.keys:  # of any length, as a list
            keys = [self.fold(k, depth) for k in node.keys]
            values = [self.fold(v, depth) for v in node.values]
            if any(i is None for i in keys + values):
                return None
            return _Folded({k.value: v.value for k, v in zip(keys, values)},
                           any(i.hidden for i in keys + values))
        if isinstance(node, ast.Subscript) and self._items_set:  # d = dict(); d["c"] = "…"
            spelled = self._item_spelled(node)
            if spelled in self._items_set:
                return self._items_set[spelled]
        if isinstance(node, ast.Subscript):  # T["a"], argv[0]: an item of a known constant
            owner, key = self.fold(node.value, depth), self.fold(node.slice, depth)
            if owner is None or key is None:
                return None
            if isinstance(owner.value, dict) and key.value in owner.value or \
                    isinstance(owner.value, (list, tuple)) and type(key.value) is int:
                return _Folded(owner.value[key.value], owner.hidden)
            return None
        if isinstance(node, ast.Call):
            return self._fold_call(node, depth)
        return None

    def _fold_binop(self, node: ast.BinOp, depth: int) -> _Folded | None:
        left = self.fold(node.left, depth)
        if left is None:  # the right not folded in vain: a sum of calls was folded anew at
            return None   # each of its levels, each call of the fifty below it (seconds a line)
        right = self.fold(node.right, depth)
        if right is None:
            return None
        if isinstance(node.op, ast.Add):
            value = _add(left.value, right.value)
            if isinstance(value, int):
                return _Folded(value, False)
            return _Folded(value, True) if value is not None else None
        if isinstance(node.op, ast.Mod) and isinstance(left.value, str) and \
                not _BIG_WIDTH.search(left.value):
            operand = tuple(right.value) if isinstance(right.value, list) else right.value
            return _Folded(_cap(left.value % operand), True)
        if isinstance(node.op, ast.BitXor) and type(left.value) is int and type(right.value) is int:
            return _Folded(left.value ^ right.value, True)
        if isinstance(node.op, ast.Mult) and isinstance(right.value, int) and \
                isinstance(left.value, (str, bytes)) and \
                len(left.value) * right.value <= _VALUE_LIMIT.get():
            return _Folded(left.value * right.value, True)
        return None

    def _fold_slice(self, node: ast.Subscript, depth: int) -> _Folded | None:
        base = self.fold(node.value, depth)
        bounds = [self.fold(b, depth) if b is not None else _Folded(None, False)
                  for b in (node.slice.lower, node.slice.upper, node.slice.step)]
        if base is None or any(b is None for b in bounds) or \
                not isinstance(base.value, (str, bytes, list)):
            return None
        return _Folded(base.value[slice(*(b.value for b in bounds))], True)

    def _fold_chr_comprehension(self, node, depth: int) -> _Folded | None:
        """``chr(c) for c in [120, 109, ...]``: the usual way to spell a word in numbers; any
        other comprehension over a short constant (``"".join(p) for p in parts``) item by item."""
        if len(node.generators) != 1 or node.generators[0].ifs:
            return None
        loop = node.generators[0]
        elt = node.elt
        if not isinstance(loop.target, ast.Name):
            return None
        if not (isinstance(elt, ast.Call)
                and isinstance(elt.func, ast.Name) and elt.func.id == "chr" and len(elt.args) == 1
                and isinstance(elt.args[0], ast.Name) and elt.args[0].id == loop.target.id):
            items = self.fold(loop.iter, depth)
            if items is None or not isinstance(items.value, (list, tuple, bytes, str)) or \
                    len(items.value) > MAX_INLINED_ITEMS:
                return None
            found = [self._fold_with({loop.target.id: _Folded(item, items.hidden)}, elt, depth)
                     for item in items.value]
            if any(f is None for f in found):
                return None
            return _Folded([f.value for f in found], True)
        codes = self.fold(loop.iter, depth)
        if codes is None or not isinstance(codes.value, list):
            return None
        return _Folded([chr(c) for c in codes.value[:MAX_VALUE]], True)

    def _fold_dict_comprehension(self, node: ast.DictComp, depth: int) -> _Folded | None:
        """``{k: v for k, v in [("t", "ngrok tcp 22")]}``: row by row, over constants."""
        if len(node.generators) != 1 or node.generators[0].ifs:
            return None
        loop = node.generators[0]
        names = _loop_names(loop.target)
        rows = self._rows(loop.iter, len(names)) if names else None
        if rows is None or len(rows) > MAX_INLINED_ITEMS:
            return None
        found, hidden = {}, False
        for row in rows:
            bound = {n: i if isinstance(i, _Folded) else self.fold(i, depth)
                     for n, i in zip(names, row)}
            if None in bound.values():
                return None
            key, value = self._fold_with(bound, node.key, depth), \
                self._fold_with(bound, node.value, depth)
            if key is None or value is None or not isinstance(key.value, (str, bytes, int)):
                return None
            found[key.value] = value.value
            hidden = hidden or key.hidden or value.hidden
        return _Folded(found, hidden)

    def _fold_with(self, bound: dict[str, _Folded], node: ast.expr, depth: int) -> _Folded | None:
        """``node`` folded with these names bound (a parameter, a loop variable), then unbound."""
        saved = {name: self.names.get(name) for name in bound}
        self.names.update(bound)
        try:
            return self.fold(node, depth)
        finally:
            for name, value in saved.items():
                if value is None:
                    self.names.pop(name, None)
                else:
                    self.names[name] = value

    def _generated(self, node: ast.expr) -> bool:
        """A call of a generator function of the cell's, or a name bound to one."""
        if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and \
                self.call_name(node.func) in ("iter", "aiter"):
            node = node.args[0]  # next(iter(It()))
        returned = self._lambda_returned(node)
        if returned is not None and isinstance(returned, ast.GeneratorExp):
            return True  # next(g()) of g = lambda: (c for c in T)
        return isinstance(node, ast.Name) and node.id in self._generators_called or \
            isinstance(node, ast.Call) and self._generator_call(node) is not None or \
            self._iter_method(node) is not None

    def _fold_generated(self, how: str, generator: ast.expr, depth: int) -> _Folded | None:
        """``next(g())`` (``await anext(g())``): the first item g yields; ``list(g())``: all,
        where each folds; ``dict(g())`` of pairs, the table."""
        items = self._items(generator, 1)
        if not items:
            return None
        folded = [i if isinstance(i, _Folded) else self.fold(i, depth) for i in items]
        if how in ("next", "anext"):
            return folded[0]
        if None in folded:
            return None
        hidden = any(f.hidden for f in folded)
        if how == "dict":  # dict(g()) of a generator of pairs
            pairs = [f.value for f in folded]
            if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
                return None
            return _Folded({_hashable(k): v for k, v in pairs}, hidden)
        return _Folded([f.value for f in folded], hidden)

    def _fold_made_by_new(self, made: tuple, node: ast.Call, depth: int) -> _Folded | None:
        """An instance of a str class whose ``__new__`` returns ``str.__new__(cls, text)``:
        that text, its parameters spelled as the call's arguments (cls as no constant)."""
        function, text = made
        call = ast.Call(func=node.func, args=[ast.Name(id=_SELF, ctx=ast.Load()), *node.args],
                        keywords=node.keywords)
        given = self._arguments_spelled(function, call)
        folded = self.fold(_spelled(text, given), depth + 1) if given is not None else None
        return _Folded(folded.value, True) if folded is not None and \
            isinstance(folded.value, str) else None

    def _fold_template(self, node: ast.Call, depth: int) -> _Folded | None:
        """``string.Template("$a$b tcp 22").substitute(a="ng", b="rok")``."""
        owner = node.func.value
        if not (isinstance(owner, ast.Call) and owner.args and
                self.call_name(owner.func) in ("string.Template", "Template")):
            return None
        template = self.fold(owner.args[0], depth)
        keywords = {kw.arg: self.fold(kw.value, depth) for kw in node.keywords}
        if template is None or not isinstance(template.value, str) or node.args or \
                None in keywords or any(v is None for v in keywords.values()):
            return None
        import string

        return _Folded(_cap(string.Template(template.value).safe_substitute(
            {k: _as_text(v.value) or "" for k, v in keywords.items()})), True)

    def _fold_inlined(self, function: ast.FunctionDef, node: ast.Call,
                      depth: int) -> _Folded | None:
        """A call of one of the cell's return-only functions with constant arguments."""
        params = [a.arg for a in function.args.posonlyargs + function.args.args]
        args = [self.fold(a, depth) for a in node.args]
        if node.keywords or any(a is None for a in args) or \
                len(args) > len(params) and function.args.vararg is None or \
                len(args) < len(params) - len(function.args.defaults):
            return None
        bound = dict(zip(params, args))
        for name, default in zip(params[::-1], function.args.defaults[::-1]):
            if name not in bound:
                bound[name] = self.fold(default, depth)
        if function.args.vararg is not None:
            rest = args[len(params):]
            bound[function.args.vararg.arg] = _Folded([a.value for a in rest],
                                                      any(a.hidden for a in rest))
        if any(v is None for v in bound.values()):
            return None
        result = self._fold_with(bound, function.body[-1].value, depth)
        return _Folded(result.value, True) if result is not None else None

    def _fold_call(self, node: ast.Call, depth: int) -> _Folded | None:
        func = node.func
        if isinstance(func, ast.Lambda) and depth < MAX_INLINE_DEPTH:  # (lambda x: …)(…)
            return self._fold_inlined(ast.FunctionDef(
                name="<lambda>", args=func.args, body=[ast.Return(func.body)], decorator_list=[]),
                node, depth)
        if isinstance(func, ast.Name) and func.id in self.pure and depth < MAX_INLINE_DEPTH:
            return self._fold_inlined(self.pure[func.id], node, depth)
        if isinstance(func, ast.Name) and func.id in self._lambdas and depth < MAX_INLINE_DEPTH:
            lam = self._lambdas[func.id]  # d("bWV0aG9k") of d = lambda x: b64decode(x)…
            return self._fold_inlined(ast.FunctionDef(
                name="<lambda>", args=lam.args, body=[ast.Return(lam.body)], decorator_list=[]),
                node, depth)
        if isinstance(func, ast.Name) and func.id == "map" and len(node.args) == 2 and \
                isinstance(node.args[0], ast.Name) and node.args[0].id == "chr":
            codes = self.fold(node.args[1], depth)
            if codes is not None and isinstance(codes.value, list):
                return _Folded([chr(c) for c in codes.value[:MAX_VALUE]], True)
            return None
        if isinstance(func, ast.Name) and func.id == "map" and len(node.args) == 2 and \
                isinstance(node.args[0], ast.Name) and node.args[0].id == "str":
            items = self.fold(node.args[1], depth)  # map(str, [...])
            if items is not None and isinstance(items.value, (list, tuple)):
                return _Folded([_as_text(v) or "" for v in items.value], True)
            return None
        if isinstance(func, ast.Name) and len(node.args) == 1 and \
                func.id in ("next", "anext", "list", "tuple", "dict") and \
                self._generated(node.args[0]):
            return self._fold_generated(func.id, node.args[0], depth)
        if isinstance(func, ast.Attribute) and func.attr in ("read", "read_text") and not node.args:
            text = self._read_file(node)  # open("cmd.txt").read() of a file the cell wrote
            return _Folded(text, True) if text else None
        args = [self.fold(a, depth) for a in node.args]
        if isinstance(func, ast.Attribute) and func.attr in ("substitute", "safe_substitute"):
            return self._fold_template(node, depth)
        if isinstance(func, ast.Attribute) and func.attr == "to_bytes" and len(args) == 2 and \
                None not in args and type(args[0].value) is int and args[0].value <= MAX_VALUE:
            number = self.fold(func.value, depth)  # (0x6e67726f6b).to_bytes(5, "big")
            if number is not None and type(number.value) is int and number.value >= 0:
                return _Folded(number.value.to_bytes(args[0].value, _as_text(args[1].value)), True)
            return None
        if isinstance(func, ast.Attribute) and func.attr == "format" and \
                all(a is not None for a in args):
            base = self.fold(func.value, depth)
            keywords = {kw.arg: self.fold(kw.value, depth) for kw in node.keywords}
            if base is not None and isinstance(base.value, str) and None not in keywords and \
                    all(v is not None for v in keywords.values()) and \
                    not _BIG_WIDTH.search(base.value) and "{0." not in base.value:
                return _Folded(_cap(base.value.format(*(a.value for a in args),
                                                      **{k: v.value for k, v in keywords.items()})),
                               True)
            return None
        if any(a is None for a in args) or node.keywords and not _only_decode_keywords(node):
            return None
        values = [a.value for a in args]
        name = self.call_name(func) or ""
        if (self.call_name(func) or "").endswith("maketrans") and len(values) == 2 and \
                all(isinstance(v, str) for v in values) and len(values[0]) == len(values[1]):
            return _Folded(str.maketrans(values[0], values[1]), True)
        if isinstance(func, ast.Attribute) and func.attr in ("join", "decode", "encode", "replace",
                                                             "split", "translate", *_STR_METHODS):
            base = self.fold(func.value, depth)
            if base is not None:
                return _Folded(_method(base.value, func.attr, values), True)
            if name.split(".")[0] in ("str", "bytes") and values:  # str.join(" ", [...])
                return _Folded(_method(values[0], func.attr, values[1:]), True)

        if isinstance(func, ast.Attribute) and func.attr == "join" and \
                isinstance(func.value, ast.Constant):
            return None
        short = name.rsplit(".", 1)[-1]
        if name == "format" and len(values) == 1 and isinstance(values[0], str):
            return _Folded(values[0], args[0].hidden)
        if name == "chr" and values and isinstance(values[0], int):
            return _Folded(chr(values[0]), True)
        if name in self._str_news:  # S(…) of a __new__ returning str.__new__(cls, v + …)
            return self._fold_made_by_new(self._str_news[name], node, depth)
        if name in self._str_classes and len(values) == 1 and isinstance(values[0], str):
            return _Folded(values[0], True)  # class S(str): … ; S("ngrok tcp 22")
        if name in ("str", "bytes", "bytearray") and len(values) == 1:
            value = values[0]
            if name == "str" and isinstance(value, (str, int)):
                return _Folded(str(value), args[0].hidden)
            if name != "str" and isinstance(value, list) and all(isinstance(v, int) for v in value):
                return _Folded(bytes(value[:MAX_VALUE]), True)
            return None
        if name in ("bytes.fromhex", "binascii.unhexlify", "binascii.a2b_hex") or \
                short in ("unhexlify", "a2b_hex"):
            return _Folded(bytes.fromhex(_as_text(values[0]) or ""), True)
        if short in ("b64decode", "urlsafe_b64decode", "standard_b64decode", "b32decode",
                     "b16decode", "a2b_base64", "decodebytes", "b85decode", "a85decode"):
            return _Folded(_b64(short, values[0]), True)
        if name in ("codecs.decode", "codecs.encode") and len(values) == 2 and isinstance(values[1], str):
            return _Folded(_codec(values[0], values[1]), True)
        if name in ("shlex.split",) and values and isinstance(values[0], str):
            return _Folded(shlex.split(values[0], comments=False)[:256], args[0].hidden)
        if name in ("shutil.which", "os.path.abspath", "os.path.realpath", "os.path.expanduser",
                    "os.fsencode", "os.fsdecode", "pathlib.Path", "os.path.normpath") and \
                len(values) == 1 and isinstance(values[0], (str, bytes)):
            return _Folded(values[0], args[0].hidden)  # the program found on the PATH is that name
        if name in ("os.path.join", "posixpath.join") and values and \
                all(isinstance(v, str) for v in values):
            return _Folded(_cap("/".join(v.rstrip("/") for v in values[:-1]) + "/" + values[-1]
                                if len(values) > 1 else values[0]), any(a.hidden for a in args))
        if name in ("zlib.decompress", "gzip.decompress", "bz2.decompress", "lzma.decompress") and \
                values and isinstance(values[0], (bytes, bytearray)):
            return _Folded(_decompress(name.split(".")[0], bytes(values[0])), True)
        if name in ("reversed",) and values and isinstance(values[0], (str, list)):
            return _Folded(list(reversed(values[0])), True)
        return None


# ---------------------------------------------------------------- helpers

def _script_runs(body: str) -> list[str]:
    """The commands a Perl, Ruby or Node cell runs through system()/exec()/execSync()...: a
    call inside a string on its line (an odd number of quotes before it) is text."""
    found = []
    for match in _SCRIPT_RUNS.finditer(body):
        before = body[body.rfind("\n", 0, match.start()) + 1:match.start()]
        if before.count("'") % 2 == 0 and before.count('"') % 2 == 0 and \
                before.count("`") % 2 == 0:
            found.append(match.group(1) or match.group(2))
        if len(found) >= MAX_LINES:
            break
    return found


MAX_INLINED_ITEMS = 64  # items of a constant a comprehension is folded over
MAX_INLINE_DEPTH = 20  # fold depth past which a helper's call is not inlined
_DECORATED = "\0decorated"  # the name a decorated function is read under (no Python name)
_FUNCTION = object()  # its value: a function, no command


MAX_LOOP_ROWS = 16  # rows of a loop read one by one
MAX_MAPPED_CALLS = 256  # calls map() makes read one by one, per cell (_mapped_calls)
MAX_CHAIN = 8  # items of an item … (r[0][0]) folded level by level
#: calls chained before a member (``__import__("ctypes").CDLL(None).system``) whose name is
#: looked for: a pandas pipeline of hundreds of links was named anew from each link (minutes)
MAX_NAMED_CHAIN = 4
MAX_METHOD_CONSTANTS = 16384  # class constants bound as self.x in methods, per cell
MAX_CHOICES = 1024  # items a variable taken from a table may be, told apart (past: a _Listed)
MAX_CHOICE_FOLDS = 4096  # folds of a command with such a variable bound, per cell
#: items of the tables a cell's loops go through that are listed, per cell; and long tables'
#: items run per folder (past it, each once in all)
MAX_ROWS = 16384


#: methods whose call may be a command with parts only known when it runs (see loose)
_LOOSE_METHODS = {"format", "format_map", "substitute", "safe_substitute", "replace", "join",
                  "strip", "split"}


def _added_operands(node: ast.BinOp) -> list[ast.expr]:
    """The operands of a ``+`` sum, left to right (no part sum folded on the way: n² in
    all); past MAX_ADDED, the rest as they are."""
    operands, chain = [], [node]
    while chain and len(operands) < MAX_ADDED:
        item = chain.pop()
        if isinstance(item, ast.BinOp) and isinstance(item.op, ast.Add):
            chain += [item.right, item.left]
        else:
            operands.append(item)
    return operands + chain[::-1]


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or \
        isinstance(node, ast.Constant) and isinstance(node.value, str)


def _percent_values(node: ast.expr) -> tuple[list[ast.expr], dict[str, ast.expr]]:
    """The values a ``%`` template is filled with: a tuple's items, a dict's by key, or one."""
    if isinstance(node, ast.Tuple):
        return list(node.elts), {}
    named = _mapping_spelled(node)
    return ([], named) if named else ([node], {})


def _mapping_spelled(node: ast.expr) -> dict[str, ast.expr]:
    """``{"k": v}`` or ``dict(k=v)`` as the cell spells it: each key's value."""
    if isinstance(node, ast.Dict):
        return {k.value: v for k, v in zip(node.keys, node.values)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return {k.arg: k.value for k in node.keywords if k.arg}
    return {}


def _field_value(field: str, positional: list, named: dict, order) -> ast.expr | None:
    """The value one template field takes: ``%(k)s``/``{k}``/``$k`` by name, ``{1}`` by
    index, ``%s``/``{}`` the next positional one (None where not spelled)."""
    if field.startswith("%"):
        key = field[2:field.index(")")] if field.startswith("%(") else None
    elif field.startswith("{"):
        key = re.split(r"[:!.\[]", field[1:-1], maxsplit=1)[0]
        if key.isdigit():
            return positional[int(key)] if int(key) < len(positional) else None
        key = key or None
    else:
        key = field[1:].strip("{}")
    if key is not None:
        return named.get(key)
    index = next(order, None)
    return positional[index] if index is not None else None


def _dotted(node: ast.AST) -> str | None:
    """``x`` or ``x.a``: the key a variable or an attribute of one is known by."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def _namespace_assigned(node: ast.DictComp) -> list[ast.stmt]:
    """A dict comprehension's item as assigned to the cell's variables, as by
    ``globals().update({k: v for …})``: ``globals()[k] = v``."""
    namespace = ast.Call(func=ast.Name(id="globals", ctx=ast.Load()), args=[], keywords=[])
    target = ast.Subscript(value=namespace, slice=node.key, ctx=ast.Store())
    return [ast.Assign(targets=[target], value=node.value, lineno=0)]


def _evaluated(node) -> list[ast.stmt]:
    elements = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
    return [ast.Expr(element) for element in elements]


def _as_loops(node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp,
              body_of=_evaluated) -> ast.For | None:
    """A comprehension as the loops it runs (``{a: f(a + b) for a in A for b in B}`` as ``for
    a in A: for b in B: a; f(a + b)``); an async loop alike (its rows an async generator's),
    a target not a name assigned from one (_with_named_target). A filter (``for c in C if
    c``) is an ``if`` around the rest (a _Filter): else adding ``if c`` read the loop's
    variables unbound, and what it ran unknown.
    ``body_of``: what each item does."""
    body: list[ast.stmt] = body_of(node)
    names = {n for g in node.generators for n in _loop_names(g.target)}
    for generator in reversed(node.generators):
        if generator.ifs:
            test = generator.ifs[0] if len(generator.ifs) == 1 else \
                ast.BoolOp(op=ast.And(), values=list(generator.ifs))
            body = [_Filter(test=test, body=body, orelse=[], loop_names=names)]
        body = [_with_named_target(ast.For(target=generator.target, iter=generator.iter,
                                           body=body, orelse=[]))]
    return body[0] if isinstance(body[0], ast.For) else None


_PARTIALS = ("functools.partial", "partial")  # (partial: from functools import partial)
_SELF = "\0self"  # what a str class's __new__ is given for cls (no constant)
_ITEM = "\0item"  # the name a loop binding anything but names binds (_with_named_target)


def _with_named_target(loop: ast.For) -> ast.For:
    """A loop binding anything but names (``for *r, in …``, ``for d["c"] in …``, ``for
    self.c in …``) as one binding a name, its target assigned that name first: what the
    assignment binds is then read as any assignment's (else it was read unbound)."""
    if _loop_names(loop.target):
        return loop
    item = f"{_ITEM}{id(loop)}"
    assigned = ast.Assign(targets=[loop.target], value=ast.Name(id=item, ctx=ast.Load()),
                          lineno=0)
    return ast.For(target=ast.Name(id=item, ctx=ast.Store()), iter=loop.iter,
                   body=[assigned, *loop.body], orelse=loop.orelse)


class _Filter(ast.If):
    """A comprehension's ``if``, with the names its loops bind: for a row of constants it
    drops (``if c != "ngrok"`` of ``c = "ngrok"``), nothing is run (see _Reader._filtered_out)."""
    _fields = ast.If._fields

    def __init__(self, *, loop_names: set[str], **fields):
        super().__init__(**fields)
        self.loop_names = loop_names


def _loop_names(target: ast.expr) -> list[str]:
    """The names a loop binds, in order (``x``; ``a, b``), or [] for any other target."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)) and \
            all(isinstance(e, ast.Name) for e in target.elts):
        return [e.id for e in target.elts]
    return []


def _any_item(iterable: ast.expr) -> ast.expr:
    """An expression for an item of ``iterable`` (what a loop over it may bind)."""
    return ast.Call(func=ast.Name(id="next", ctx=ast.Load()),
                    args=[ast.Call(func=ast.Name(id="iter", ctx=ast.Load()), args=[iterable],
                                   keywords=[])], keywords=[])


def _node_of(value) -> ast.expr:
    """A folded constant as the expression that spells it (a row's item given to a call)."""
    if isinstance(value, (list, tuple)):
        return (ast.List if isinstance(value, list) else ast.Tuple)(
            elts=[_node_of(v) for v in value], ctx=ast.Load())
    if isinstance(value, dict):
        return ast.Dict(keys=[_node_of(k) for k in value],
                        values=[_node_of(v) for v in value.values()])
    return ast.Constant(value)


class _Spelled(ast.NodeTransformer):
    """Names replaced by the expressions given for them (a row's items for loop variables)."""

    def __init__(self, spelled: dict[str, ast.expr]):
        self.spelled = spelled

    def visit_Name(self, node):
        return self.spelled.get(node.id, node) if isinstance(node.ctx, ast.Load) else node


_PAIR = "\0pair"  # the names of a filtered pair's items (_filter_as_search)


class _PairSpelled(ast.NodeTransformer):
    """A filter's parameter p over pairs: ``p[0]``, ``p[1]`` as the pair's names, p alone as
    the tuple of both."""

    def __init__(self, param: str, pair: list[ast.Name]):
        self.param, self.pair = param, pair

    def visit_Subscript(self, node):
        if isinstance(node.value, ast.Name) and node.value.id == self.param and \
                isinstance(node.slice, ast.Constant) and node.slice.value in (0, 1, -1, -2) and \
                type(node.slice.value) is int:
            return self.pair[node.slice.value]
        return self.generic_visit(node)

    def visit_Name(self, node):
        return ast.Tuple(elts=list(self.pair), ctx=ast.Load()) if node.id == self.param else node


def _spelled(node: ast.expr, spelled: dict[str, ast.expr]) -> ast.expr:
    return _Spelled(spelled).visit(copy.deepcopy(node))


class _GeneratorFacts:
    """What _yielded reads of a generator function, read once: its yields in order of the
    text, each node's parent, its variables, those assigned once (_assigned_once), and the
    names each yield's value uses."""

    def __init__(self, function):
        own = _own_scope(function)
        self.yields = [n for n in own if isinstance(n, (ast.Yield, ast.YieldFrom))]
        self.parents = {id(child): node for node in own for child in ast.iter_child_nodes(node)}
        self.local = {n.id for n in own if isinstance(n, ast.Name) and
                      not isinstance(n.ctx, ast.Load)}
        self.once = _assigned_once(function, self.local)
        self.in_blocks = _assigned_once_in_blocks(function, self.parents)
        self.names = {id(y): {n.id for n in ast.walk(y) if isinstance(n, ast.Name)}
                      for y in self.yields}


def _assigned_once(function, local: set[str]) -> dict[str, ast.expr]:
    """The variables of a function assigned once, by a statement of its own body (in no loop
    or block), a value of no variable of its: ``c = "ngrok tcp 22"``, as that value."""
    stores: dict[str, int] = {}
    for node in _own_scope(function):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            stores[node.id] = stores.get(node.id, 0) + 1
    found = {}
    for statement in function.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and \
                isinstance(statement.targets[0], ast.Name) and \
                stores.get(statement.targets[0].id) == 1 and \
                not any(isinstance(n, ast.Name) and n.id in local
                        for n in ast.walk(statement.value)):
            found[statement.targets[0].id] = statement.value
    return found


def _assigned_once_in_blocks(function, parents: dict) -> dict[str, ast.Assign]:
    """The variables a function assigns once, by a plain ``d = …`` inside a block (a loop's
    body: ``for c in T: d = c; yield d``): name -> that statement. A yield after it in its
    block (_dominated) yields the value assigned there."""
    stores: dict[str, int] = {}
    for node in _own_scope(function):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            stores[node.id] = stores.get(node.id, 0) + 1
    return {node.targets[0].id: node for node in _own_scope(function)
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and
            isinstance(node.targets[0], ast.Name) and stores[node.targets[0].id] == 1 and
            id(node) in parents}


def _dominated(statement: ast.stmt, node: ast.AST, parents: dict) -> bool:
    """Whether ``node`` runs only after ``statement`` in ``statement``'s block: it is in (or
    is) a later statement of the same body."""
    block = parents[id(statement)]
    body = next((b for b in (getattr(block, f, None) for f in ("body", "orelse", "finalbody"))
                 if isinstance(b, list) and any(s is statement for s in b)), None)
    if body is None:
        return False
    later = {id(s) for s in body[[id(s) for s in body].index(id(statement)) + 1:]}
    while id(node) in parents and id(node) not in later:
        node = parents[id(node)]
    return id(node) in later


def _text_made_by_new(node: ast.ClassDef) -> tuple | None:
    """A str class's ``def __new__(cls, v): return str.__new__(cls, <text>)`` (or
    ``super().__new__(cls, <text>)``), its only statement: (that function, the text)."""
    news = [s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__new__"]
    if len(news) != 1 or news[0].decorator_list or len(news[0].body) != 1 or \
            not isinstance(news[0].body[0], ast.Return):
        return None
    function, made = news[0], news[0].body[0].value
    params = [a.arg for a in function.args.posonlyargs + function.args.args]
    if not (isinstance(made, ast.Call) and isinstance(made.func, ast.Attribute) and
            made.func.attr == "__new__" and len(made.args) == 2 and not made.keywords and
            params and isinstance(made.args[0], ast.Name) and made.args[0].id == params[0]):
        return None
    owner = made.func.value
    if not (isinstance(owner, ast.Name) and owner.id == "str" or
            isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and
            owner.func.id == "super" and not owner.keywords and (not owner.args or (
                len(owner.args) == 2 and isinstance(owner.args[0], ast.Name) and
                owner.args[0].id == node.name and isinstance(owner.args[1], ast.Name) and
                owner.args[1].id == params[0]))):  # super(), super(S, cls)
        return None
    return function, made.args[1]


def _an_instance(cls: str) -> ast.expr:
    """A method's self, spelled where its yields are read: an instance of its class (``self.g()``
    in a generator is that class's method; ``self.c`` no constant)."""
    return ast.Call(func=ast.Name(id=cls, ctx=ast.Load()), args=[], keywords=[])


def _table_spelled(value: ast.expr) -> ast.Dict | ast.List | ast.Tuple | None:
    """A table the cell spells whole: ``{"s": f}``, ``dict(s=f)``, ``[f, g]`` (no spread)."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and \
            value.func.id == "dict" and not value.args and \
            all(k.arg for k in value.keywords):
        value = ast.Dict(keys=[ast.Constant(k.arg) for k in value.keywords],
                         values=[k.value for k in value.keywords])
    if isinstance(value, ast.Dict) and None not in value.keys and len(value.keys) <= MAX_MEMBERS:
        return value
    if isinstance(value, (ast.List, ast.Tuple)) and len(value.elts) <= MAX_MEMBERS and \
            not any(isinstance(e, ast.Starred) for e in value.elts):
        return value
    return None


def _hashable_constant(value) -> bool:
    return isinstance(value, (str, bytes, int, float, bool, type(None)))


def _stores_in(statements: list[ast.stmt]) -> dict[str, list[ast.expr | None]]:
    """The names statements store to, each with what is stored: a plain ``c = …``'s value,
    None for any other store (``i += 1``, a walrus, a loop's variable, unpacking)."""
    plain = {id(n.targets[0]): n.value for statement in statements for n in ast.walk(statement)
             if isinstance(n, ast.Assign) and len(n.targets) == 1 and
             isinstance(n.targets[0], ast.Name)}
    stores: dict[str, list[ast.expr | None]] = {}
    for statement in statements:
        for n in ast.walk(statement):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                stores.setdefault(n.id, []).append(plain.get(id(n)))
    return stores


def _is_generator(function) -> bool:
    return any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _own_scope(function))


def _own_scope(function) -> list[ast.AST]:
    """The nodes of a function's body, those of functions, lambdas and classes in it aside
    (their yields and variables are theirs)."""
    found, stack = [], list(function.body)
    while stack:
        node = stack.pop()
        found.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    found.sort(key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))
    return found


def _hashable(value):
    """A command as a set's key (an argv list as a tuple)."""
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value if isinstance(value, (str, bytes, int)) else repr(value)


def _previous_statements(tree: ast.AST) -> dict[int, ast.stmt]:
    """Each loop's statement just before it in the same block: id(loop) -> that statement."""
    found = {}
    for node in ast.walk(tree):
        for block in ("body", "orelse", "finalbody"):
            statements = getattr(node, block, None)
            if isinstance(statements, list):
                for before, statement in zip(statements, statements[1:]):
                    if isinstance(statement, ast.For):
                        found[id(statement)] = before
    return found


_COMPARISONS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
                ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
                ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
#: a string's methods a name filter may test it with (each bounded by the folded lengths)
_STR_PREDICATES = frozenset(("startswith", "endswith", "isidentifier", "islower", "isupper",
                             "isalpha", "isalnum", "__contains__", "__eq__"))


def _calls_chained(node: ast.expr, most: int) -> bool:
    """Whether more than ``most`` calls are chained in ``node`` (``a.f().g().h``)."""
    calls = 0
    while isinstance(node, (ast.Attribute, ast.Call)):
        if isinstance(node, ast.Call):
            calls += 1
            if calls > most:
                return True
        node = node.func if isinstance(node, ast.Call) else node.value
    return False


def _may_be_members_table(node: ast.expr) -> bool:
    """Whether ``node`` is shaped as a table of members or variables is (``vars(…)``,
    ``dict(…)``, ``globals()``, ``x.__dict__``, ``f.f_globals``, ``sys.modules``: a dotted
    name or a call of one), so that a chain of ``.get(…)`` is not read anew at each link."""
    hops = 0  # calls and items along the way (``sys._getframe().f_globals``): two at most
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("get", "__getitem__"):
            return False  # a chain of .get(…): the outer link is no table of members
        if not isinstance(node, ast.Attribute):
            hops += 1
            if hops > 2:
                return False
        node = node.func if isinstance(node, ast.Call) else node.value
    return isinstance(node, ast.Name)


def _pinned(tests: list[ast.expr], name: str, fold) -> list:
    """The constants conditions that must all hold pin ``name`` to: ``name == "a"``, ``"a" ==
    name``, ``name in ("a", "b")``, the constants folded (the first such condition's; [] if
    none)."""
    for test in tests:
        found = []
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            found = _pinned(test.values, name, fold)
        elif isinstance(test, ast.Compare) and len(test.ops) == 1:
            left, right, op = test.left, test.comparators[0], test.ops[0]
            if isinstance(op, ast.Eq) and isinstance(right, ast.Name) and right.id == name:
                left, right = right, left
            if isinstance(op, ast.In) and isinstance(right, ast.Set):  # ``k in {"a"}``: a tuple's
                right = ast.Tuple(elts=right.elts, ctx=ast.Load())
            if isinstance(left, ast.Name) and left.id == name and \
                    isinstance(op, (ast.Eq, ast.In)) and (value := fold(right)) is not None:
                found = [value.value] if isinstance(op, ast.Eq) else \
                    list(value.value) if isinstance(value.value, (list, tuple)) else []
        if found:
            return found
    return []


def _dotted_name(name: str) -> ast.expr:
    """``a.b.c`` as the expression that names it."""
    head, *rest = name.split(".")
    node: ast.expr = ast.Name(id=head, ctx=ast.Load())
    for part in rest:
        node = ast.Attribute(value=node, attr=part, ctx=ast.Load())
    return node


def _defaults(arguments: ast.arguments) -> dict[str, ast.expr]:
    """A function's parameters that have a default: name -> the default."""
    params = arguments.posonlyargs + arguments.args
    found = {a.arg: d for a, d in zip(params[len(params) - len(arguments.defaults):],
                                      arguments.defaults)}
    found.update({a.arg: d for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d})
    return found


def _root(node: ast.expr) -> str | None:
    """The variable an attribute or item is read from (``tools`` of ``tools["sh"].run``)."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _returned(function) -> list[ast.expr]:
    """What a function gives its caller: its returns, and what it yields (a generator's items)."""
    return [n.value for n in ast.walk(function)
            if isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom)) and n.value][:64]


def _returns_only(function) -> bool:
    """``def f(a, *b): return expr`` (a docstring allowed), undecorated, synchronous."""
    body = function.body[1:] if function.body and isinstance(function.body[0], ast.Expr) and \
        isinstance(function.body[0].value, ast.Constant) else function.body
    return isinstance(function, ast.FunctionDef) and not function.decorator_list and \
        len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None and \
        not function.args.kwonlyargs and function.args.kwarg is None

def _size(tree: ast.AST, limit: int) -> int:
    """How many nodes ``tree`` has, counted up to ``limit``."""
    count = 0
    for _ in ast.walk(tree):
        count += 1
        if count >= limit:
            break
    return count


_KEPT = "\0kept aside"  # a runner handed over that is only known to be in a holder
_SAME_HOLDER = ("__dict__", "__mro__", "__bases__", "__base__")  # what a holder holds, again
_PLAIN_DECORATORS = ("dataclass", "dataclasses.dataclass", "functools.total_ordering",
                     "typing.final", "final")  # class decorators that add no runner
_CLASS = "\0class"  # in a class's members: those not named are its bases' (no runners)
#: methods whose result stands for an attribute (``__getattr__``) or what ``with`` binds
_GIVING_METHODS = ("__getattr__", "__getattribute__", "__enter__", "__aenter__")


def _may_run(members, key) -> bool:
    """Whether a holder's member ``key`` may be a runner (not known: it may)."""
    if members is None or key is None:
        return True
    if isinstance(members, list):
        return members[key] if type(key) is int and -len(members) <= key < len(members) else True
    if _CLASS in members and key not in members:  # a base's (outside the cell), or none
        return members.get("__getattr__", False) or members.get("__getattribute__", False)
    return members.get(key, True)


LIBC = "libc"  # a handle on a C library opened through ctypes
_DLL_OPENERS = {"ctypes.CDLL", "ctypes.PyDLL", "ctypes.cdll.LoadLibrary", "ctypes.CDLL.LoadLibrary",
                "ctypes.pydll.LoadLibrary", "ctypes.LibraryLoader.LoadLibrary"}
# what a C library's functions are, when the cell calls them through a handle
_LIBC_RUNS = {"system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp",
              "posix_spawn", "posix_spawnp"}


def _canonical(name: str | None) -> str | None:
    """``__builtins__.__import__`` is ``__import__``; a C library's ``system`` is ``os.system``."""
    if not name:
        return name
    for prefix in ("__builtins__.", "builtins."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.startswith(("posix.", "nt.")):  # os re-exports them: posix.system is os.system
        name = "os." + name.split(".", 1)[1]
    if name.startswith(LIBC + "."):
        rest = name[len(LIBC) + 1:]
        if rest in _LIBC_RUNS:
            return f"os.{rest}"
    return name


_MARSHAL_SHORT = {ord("z"), ord("Z")}  # short ASCII strings: a length byte
_MARSHAL_LONG = {ord(c) for c in "aAut"}  # ASCII or UTF-8 strings: a 4-byte length
MAX_MARSHAL_STRINGS = 4096


def _marshal_strings(data: bytes) -> list[str]:
    """The printable strings of marshal data, in order (each type code, FLAG_REF or not,
    followed by its length and text; what only looks so in code bytes is read too)."""
    found: list[str] = []
    at = 0
    while at < len(data) - 1 and len(found) < MAX_MARSHAL_STRINGS:
        code = data[at] & 0x7F
        if code in _MARSHAL_SHORT:
            size, start = data[at + 1], at + 2
        elif code in _MARSHAL_LONG and at + 5 <= len(data):
            size, start = int.from_bytes(data[at + 1:at + 5], "little"), at + 5
        else:
            at += 1
            continue
        text = data[start:start + size]
        if size and len(text) == size and text.isascii() and text.decode().isprintable():
            found.append(text.decode())
            at = start + size
        else:
            at += 1
    return found


def _cap(value):
    if isinstance(value, (str, bytes)) and len(value) > _VALUE_LIMIT.get():
        raise ValueError("too long")
    return value


def _add(a, b):
    if isinstance(a, str) and isinstance(b, str) or isinstance(a, bytes) and isinstance(b, bytes):
        return _cap(a + b)
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
        return a + b
    return None


def _method(base, method: str, args: list):
    if method == "join" and isinstance(base, (str, bytes)) and len(args) == 1:
        items = args[0]
        if isinstance(items, (str, bytes)):
            items = list(items) if isinstance(items, str) else [bytes([b]) for b in items]
        return _cap(base.join(items))
    if method == "decode" and isinstance(base, (bytes, bytearray)):
        return bytes(base).decode(*(a for a in args[:1] if isinstance(a, str)) or ("utf-8",),
                                  errors="replace")
    if method == "encode" and isinstance(base, str):
        return base.encode("utf-8", "replace")
    if method == "replace" and isinstance(base, str) and len(args) == 2:
        return _cap(base.replace(args[0], args[1]))
    if method == "split" and isinstance(base, str) and len(args) <= 1:
        return base.split(*(a for a in args if isinstance(a, str)))[:256]
    if method in _STR_METHODS and isinstance(base, str) and \
            all(isinstance(a, str) for a in args) and len(args) <= 1:
        return _cap(getattr(base, method)(*args))  # none makes a string much longer
    if method == "translate" and isinstance(base, str) and len(args) == 1 and \
            isinstance(args[0], dict):
        return _cap(base.translate(args[0]))
    return None


#: str methods folded: their results are no longer than their base (str.upper of "ß" aside)
_STR_METHODS = ("strip", "lstrip", "rstrip", "lower", "upper", "casefold", "swapcase", "title",
                "capitalize", "removeprefix", "removesuffix", "rsplit", "splitlines",
                "partition", "rpartition")


def _only_decode_keywords(node: ast.Call) -> bool:
    return all(kw.arg in ("encoding", "errors", "validate", "altchars") for kw in node.keywords)


def _b64(kind: str, value):
    data = value.encode() if isinstance(value, str) else value
    if kind == "b32decode":
        return base64.b32decode(data)
    if kind == "b16decode":
        return base64.b16decode(data, casefold=True)
    if kind == "urlsafe_b64decode":
        return base64.urlsafe_b64decode(data)
    if kind in ("b85decode", "a85decode"):
        return getattr(base64, kind)(data)
    return base64.b64decode(data)


def _codec(value, codec: str):
    codec = codec.lower().replace("-", "_")
    if codec in ("rot13", "rot_13") and isinstance(value, str):
        return codecs.decode(value, "rot13")
    data = value.encode() if isinstance(value, str) else value
    if codec in ("hex", "hex_codec"):
        return binascii.unhexlify(data)
    if codec in ("base64", "base64_codec"):
        return base64.b64decode(data)
    return None


def _literals(tree: ast.AST) -> str:
    """The string constants a cell's source spells out, lower case, NUL-separated."""
    found, size = [], 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            text = _as_text(node.value).lower()
            found.append(text)
            size += len(text)
            if size > MAX_SOURCE:
                break
    return "\0".join(found)


def _decompress(kind: str, data: bytes) -> bytes:
    """Bounded decompression: at most MAX_VALUE bytes come out (a zip bomb stays small)."""
    import bz2
    import lzma
    import zlib
    if kind == "zlib":
        return zlib.decompressobj().decompress(data, MAX_VALUE)
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, MAX_VALUE)
    decompressor = bz2.BZ2Decompressor() if kind == "bz2" else lzma.LZMADecompressor()
    return decompressor.decompress(data, max_length=MAX_VALUE)


def _as_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _decode_literal(text: str) -> list[str]:
    """Readable text hidden in a base64 or hex literal, if it is one."""
    found = []
    if len(text) <= MAX_VALUE and _HEX.match(text):
        found.append(_readable(bytes.fromhex(text)))
    if len(text) <= MAX_VALUE and _B64.match(text) and not text.isalpha() and not text.isdigit():
        padded = text + "=" * (-len(text) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                found.append(_readable(decode(padded)))
                break
            except (binascii.Error, ValueError):
                continue
    return [f for f in found if f]


def _readable(data: bytes) -> str | None:
    """The bytes as text when they are nearly all printable ASCII, else None."""
    if len(data) < 6:
        return None
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in data)
    return data.decode("ascii", "replace") if printable / len(data) >= 0.95 else None


def _is_get_ipython(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
        node.func.id == "get_ipython"


def _cell_text(process) -> str:
    normalised = getattr(process, "normalised", None)
    return normalised if normalised is not None else normalise_cell(getattr(process, "cell", ""))


FIELDS[CELL_FIELD] = Field(
    CELL_FIELD, "text", "a cell's source, normalised: one finding per line (run:, hidden:, text:, "
    "import:, call:, base:); cell signatures only", _cell_text)
