"""Shell commands split into the programs they would start, without running anything.

``split_shell("cd roop && sudo nohup python run.py -s a.jpg &")`` gives the argv of every
program that line would exec, in order, with the folder each would start in::

    Command(argv=['sudo', 'nohup', 'python', 'run.py', ...], cwd='roop')
    Command(argv=['nohup', 'python', 'run.py', ...], cwd='roop')     # sudo's child
    Command(argv=['python', 'run.py', ...], cwd='roop')              # nohup execs it

Understood: words and quotes (``shlex``), ``&&``, ``||``, ``;``, ``|``, ``&``, newlines,
sub-shells ``( … )``, redirections, ``cd``, assignments (``A=b cmd`` and ``A=b`` then ``$A``),
``$(…)`` and backticks (their commands are started too), the wrappers that start another
program (``sudo``, ``nohup``, ``timeout``, ``env``, ``nice``, ``setsid``, ``exec``, ``xargs``,
``screen -dm``, ``tmux new -d`` …) and shells given a script (``bash -c '…'``, ``sh -c``).
Pure stdlib, bounded: at most MAX_COMMANDS programs per text, nesting MAX_DEPTH deep; a
running process's command line (the engine's and the exec check's readings) is read within
MAX_WORK characters in all, once per command line, and within PROCESS_WORK per process.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import posixpath
import re
import shlex
import threading
from collections import OrderedDict
from dataclasses import dataclass

MAX_COMMANDS = 200
MAX_DEPTH = 4
MAX_TEXT = 16 * 1024

#: Programs whose arguments are data, never run: a tool's name or a magnet link given to them is
#: not the tool (`echo ngrok http 80`, `grep -r xmrig .`, `pkill ngrok`).
DATA_ONLY = {"echo", "printf", "cat", "tac", "grep", "egrep", "fgrep", "rg", "ls", "which", "type",
             "whereis", "man", "info", "head", "tail", "less", "more", "wc", "touch", "mkdir",
             "rm", "rmdir", "chmod", "chown", "file", "stat", "du", "df", "basename", "dirname",
             "test", "[", "true", "false", "sleep", "kill", "pkill", "killall", "pgrep", "ps",
             "md5sum", "sha256sum", "sha1sum", "tee", "sort", "uniq", "cut", "tr",
             "diff", "cmp", "strings", "readlink", "realpath", "nvidia-smi", "id", "whoami"}
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"}
PYTHONS = re.compile(r"^(python|python[23](\.[0-9]+)?|pypy3?|ipython3?)$")
_OPERATORS = {"&&", "||", ";", "|", "&", "|&", ";;", "(", ")", "\n"}
_REDIRECT = re.compile(r"^[0-9]*(>>?|<<?<?|>&|<&|&>>?|>\|)$")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
#: ``${V:1:4}``, ``${V:0-3}`` (a substring; ``${V: -3}`` is read as that), ``${V:-x}``/``${V-x}`` (a default),
#: ``${V/a/b}``/``${V//a/b}`` (a literal text replaced), ``${V#a}``/``${V%a}`` (a literal
#: prefix or suffix removed). Patterns with glob characters are left alone (not expanded).
#: Each part is bounded (256 characters): linear over a line of unclosed ``${V:-``.
_PARAMETER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:"
                        r":(?P<offset>[0-9]+|0-[0-9]+)(?::(?P<length>-?[0-9]+))?"
                        r"|(?P<default>:?-)(?P<fallback>[^}]{0,256})"
                        r"|(?P<replace>//?)(?P<old>[^/}*?\[]{1,256})/(?P<new>[^}]{0,256})"
                        r"|(?P<strip>##?|%%?)(?P<affix>[^}*?\[]{1,256}))\}")
_GLOB = re.compile(r"[*?\[]")


@dataclass
class Command:
    argv: list[str]
    cwd: str | None = None  # the folder it starts in, relative or absolute; None: unknown
    note: str = ""  # how it was read, for the evidence ("xmrig renamed kworker")


# wrapper -> (options that take a value, whether a positional comes before the command)
_WRAPPERS: dict[str, tuple[set[str], int]] = {
    "sudo": ({"-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "--user", "--group"}, 0),
    "doas": ({"-u", "-C"}, 0),
    "nohup": (set(), 0),
    "setsid": (set(), 0),
    "exec": ({"-a"}, 0),
    "command": (set(), 0),
    "builtin": (set(), 0),
    "time": ({"-f", "-o", "--format", "--output"}, 0),
    "nice": ({"-n", "--adjustment"}, 0),
    "ionice": ({"-c", "-n", "-p", "--class", "--classdata"}, 0),
    "chrt": (set(), 1),
    "taskset": (set(), 1),
    "stdbuf": ({"-i", "-o", "-e"}, 0),
    "timeout": ({"-s", "-k", "--signal", "--kill-after"}, 1),
    "env": ({"-u", "-C", "-S", "--unset", "--chdir"}, 0),
    "xargs": ({"-I", "-n", "-P", "-L", "-d", "-E", "-s", "-a", "--max-args", "--max-procs",
               "--delimiter", "--arg-file"}, 0),
    "cpulimit": ({"-l", "-p", "-e", "--limit", "--pid", "--exe"}, 0),
    "proxychains": ({"-f"}, 0),
    "proxychains4": ({"-f"}, 0),
    "torsocks": (set(), 0),
    "unbuffer": (set(), 0),
    "sshpass": ({"-p", "-f", "-d", "-P"}, 0),
    "watch": ({"-n", "-d", "--interval"}, 0),
    "strace": ({"-o", "-e", "-p", "-s"}, 0),
    "daemonize": ({"-c", "-e", "-o", "-p", "-l", "-u"}, 0),
    "runuser": ({"-u", "-g", "--user", "--group"}, 0),
    "catchsegv": (set(), 0),
    "firejail": (set(), 0),
    "flock": ({"-w", "--wait", "--timeout", "-E", "--conflict-exit-code"}, 1),
}

#: Programs that start the program their arguments name (the wrappers, find's -exec).
WRAPPING = frozenset(_WRAPPERS) | {"find"}

#: The dynamic loader runs the program it is given (``/lib64/ld-linux-x86-64.so.2 ./tool``):
#: a wrapper whose own name varies with the architecture and the C library.
_LOADER = re.compile(r"^ld(-linux(-[\w-]+)?|-musl-\w+)?\.so(\.[0-9]+)*$")
_LOADER_OPTIONS = {"--library-path", "--preload", "--argv0", "--audit", "--inhibit-rpath"}


def split_shell(text: str, cwd: str | None = None, variables: dict[str, str] | None = None,
                depth: int = 0, redirects: list[str] | None = None) -> list[Command]:
    """Every program a shell would start for ``text`` (a ``!`` line, a ``%%bash`` body, an
    ``os.system`` string), outer wrappers first. ``variables`` (shell variables set earlier
    in the same shell) is updated with the assignments the text makes. ``redirects`` gets
    each redirection whose target a variable spells, expanded (``>& /dev/tcp/host/4444`` for
    ``P=/dev/tc; … >& ${P}p/host/4444``): a redirection is no argv, so only this shows it."""
    found: list[Command] = []
    _Shell(found, cwd, {} if variables is None else variables,
           [] if redirects is None else redirects).run(text, depth)
    return found[:MAX_COMMANDS]


def split_argv(argv: list[str], cwd: str | None = None, depth: int = 0) -> list[Command]:
    """The programs an exec of ``argv`` starts: itself, and what its wrappers start."""
    found: list[Command] = []
    _Shell(found, cwd, {}).program([str(a) for a in argv], depth)
    return found[:MAX_COMMANDS]


def _script_at(args: list[str]) -> int | None:
    """Where a shell's arguments (after its name) give it a script: the index of the word
    after ``-c``/``-lc``…; None for ``sh script.sh`` (a file) or no script."""
    for i, word in enumerate(args):
        if word.startswith("-") and not word.startswith("--") and "c" in word[1:]:
            return i + 1 if i + 1 < len(args) else None
        if not word.startswith("-"):
            return None
    return None


#: A script that names a network device: its redirections are read as its text is
_NETWORK_DEVICE = re.compile(r"/dev/(tcp|udp)/")


def reads_script(exe: str) -> bool:
    """Whether the rules read a program's script or wrapped command (engine.as_judged): a
    shell's or a wrapper's, judged by its file's name."""
    name = base(exe)
    return name in SHELLS or name in WRAPPING


def script_as_programs(argv: list[str], budget: ScriptBudget | None = None
                       ) -> list[list[str]] | None:
    """The programs a shell given a script (``sh -c 'python t.py && echo "xmrig -o …"'``)
    starts, as the cell check reads a ``!`` line: the text tools (DATA_ONLY, whose arguments
    are data) left out, and the inner shells given a script (their programs are listed).
    None where the script is to be read as text: not a shell given a script, one read only
    in part, or one that names /dev/tcp (a redirection is no program's argument)."""
    if len(argv) < 3 or base(argv[0]) not in SHELLS - {"busybox"} \
            or _script_at(argv[1:]) is None or _NETWORK_DEVICE.search(" ".join(argv)):
        return None
    parsed = _parsed(argv, budget)
    if parsed.redirects or not parsed.whole:
        return None
    inner = parsed.programs[1:]
    if not inner or len(inner) >= MAX_COMMANDS - 1 or not all(inner):
        return None
    return [list(a) for a in inner if base(a[0]) not in DATA_ONLY
            and not (base(a[0]) in SHELLS and _script_at(a[1:]) is not None)]


def wrapped_text_tool(argv: list[str], budget: ScriptBudget | None = None) -> list[str] | None:
    """A chain of wrappers whose program is a text tool (``find . | xargs grep -l --
    --donate-level``, ``timeout 60 grep …``, ``find . -exec grep … {} +``), as the cell check
    reads it: the words up to the tool's name, its arguments (data) left out. None for
    anything else (a wrapper starting any other program is read whole)."""
    name = base(argv[0]) if argv else ""
    if name not in WRAPPING:
        return None
    parsed = _parsed(argv, budget)
    chain = parsed.programs
    if not parsed.whole or not chain:
        return None
    tool = list(chain[-1])
    if len(chain) < 2 or not tool or base(tool[0]) not in DATA_ONLY \
            or any(not c or base(c[0]) not in WRAPPING for c in chain[:-1]):
        return None
    if name == "find":  # its -exec's words, filtered: the tool's name is the word after it
        at = argv.index("-exec") if "-exec" in argv else argv.index("-execdir")
        return argv[:at + 2] if argv[at + 1:at + 2] == tool[:1] else None
    if argv[len(argv) - len(tool):] != tool:
        return None  # env -S, a find inside: not the tool's own words
    return argv[:len(argv) - len(tool) + 1]


def network_redirects(argv: list[str], budget: ScriptBudget | None = None) -> list[str]:
    """The redirections of a shell's script (``sh -c '…'``) to a network device whose path a
    variable or quotes spell (``d=/dev; exec 3<>$d/tcp/host/4444``, ``"/dev/t"cp/…``), as the
    shell reads them: the text names no /dev/tcp, the shell opens it all the same."""
    if len(argv) < 3 or base(argv[0]) not in SHELLS - {"busybox"} or _script_at(argv[1:]) is None:
        return []
    return list(_parsed(argv, budget).redirects)


#: Characters one parse of a running process's command line reads in all, its texts, sub-shells,
#: evals and substitutions together (each text is cut at MAX_TEXT already): a script shaped to
#: have each eval read the text again cost the engine 170 ms per new command line (session
#: 21), one whose argument area is rewritten at every tick that much at every tick.
MAX_WORK = 2 * MAX_TEXT
#: Parses kept (the engine asks at every tick a process changed, the exec check at each exec),
#: and the characters their programs hold in all: past either, the least recent go.
PARSES_KEPT = 1024
PARSES_KEPT_CHARS = 8 << 20
#: Characters of command lines not read before that one process's readings may take in all
#: (a shell reads its script once, most in a few hundred characters; a root user may rewrite
#: its argument area at every tick, each time a reading of MAX_WORK, 30-50 ms):
#: past them, a new command line of it is read only as far as SPENT_WORK (a redirection to a
#: network device that far still shows), and judged on its text past that.
PROCESS_WORK = 4 * MAX_WORK
SPENT_WORK = MAX_TEXT // 8


class ScriptBudget:
    """What is left of one process's PROCESS_WORK, across ticks (the engine keeps one per
    process, as its regex budget)."""

    __slots__ = ("left",)

    def __init__(self, chars: int = PROCESS_WORK):
        self.left = chars


class _Budget:
    """What is left of one parse's work; ``cut`` once a text was not read whole."""

    __slots__ = ("left", "cut", "spent")

    def __init__(self, left: int):
        self.left, self.cut, self.spent = left, False, False

    def take(self, text: str) -> str:
        """What of ``text`` is read: at most MAX_TEXT characters, and what is left. Asked
        once nothing is left, the parse is ``spent``: it reads and expands nothing more."""
        if self.left <= 0 and text:
            self.cut = self.spent = True
            return ""
        chars = min(len(text), MAX_TEXT, self.left)
        self.cut = self.cut or chars < len(text)
        self.left -= chars
        return text[:chars]


@dataclass(frozen=True)
class _Parse:
    programs: tuple[tuple[str, ...], ...]  # the argv of each program started, outer first
    redirects: tuple[str, ...]  # redirections to a network device, however spelled
    whole: bool  # the script was read whole (neither cut at MAX_TEXT nor at MAX_WORK)

    def chars(self) -> int:
        return sum(len(w) for a in self.programs for w in a) + sum(map(len, self.redirects))


_parses: OrderedDict[bytes, _Parse] = OrderedDict()
_parses_chars = [0]
_parses_lock = threading.Lock()


def _parsed(argv: list[str], spending: ScriptBudget | None = None) -> _Parse:
    """One parse of an exec of ``argv`` within MAX_WORK, kept by a digest of the command line
    (not the words themselves: a thousand 64 KiB command lines would hold 64 MiB). A parse
    not kept yet is charged to ``spending``, the process's: once that is spent, it reads at
    most SPENT_WORK, and is not kept."""
    words = [str(a) for a in argv]
    key = hashlib.blake2b("\0".join(words).encode("utf-8", "surrogatepass"),
                          digest_size=16).digest()
    with _parses_lock:
        known = _parses.get(key)
        if known is not None:
            _parses.move_to_end(key)
            return known
    found: list[Command] = []
    redirects: list[str] = []
    work = MAX_WORK if spending is None or spending.left >= MAX_WORK else SPENT_WORK
    budget = _Budget(work)
    _Shell(found, None, {}, redirects, devices=True, budget=budget).program(words, 0)
    parsed = _Parse(tuple(tuple(c.argv) for c in found[:MAX_COMMANDS]),
                    tuple(r for r in redirects if _NETWORK_DEVICE.search(r))[:8], not budget.cut)
    if spending is not None:
        spending.left = max(0, spending.left - (work - budget.left))
    if work < MAX_WORK:
        return parsed  # read in part for want of the process's budget: not another's reading
    with _parses_lock:
        if key not in _parses:
            _parses[key] = parsed
            _parses_chars[0] += parsed.chars()
        while _parses and (len(_parses) > PARSES_KEPT or _parses_chars[0] > PARSES_KEPT_CHARS):
            _parses_chars[0] -= _parses.popitem(last=False)[1].chars()
    return parsed


class _Shell:
    def __init__(self, found: list[Command], cwd: str | None, variables: dict[str, str],
                 redirects: list[str] | None = None, devices: bool = False,
                 budget: _Budget | None = None):
        self.found, self.cwd, self.vars = found, cwd, variables
        self.redirects = [] if redirects is None else redirects
        self.devices = devices  # redirections to a network device kept, however spelled
        # shared by its sub-shells: the whole parse's (None: a cell's text, checked once)
        self.budget = budget

    def sub(self) -> _Shell:
        """A sub-shell: this one's variables, copied."""
        return _Shell(self.found, self.cwd, dict(self.vars), self.redirects, self.devices,
                      self.budget)

    # ------------------------------------------------------------ text

    def run(self, text: str, depth: int) -> None:
        if depth > MAX_DEPTH or not text:
            return
        if self.budget is not None:
            text = self.budget.take(text)  # read in part: the engine judges the text as it is
            if not text:
                return
        text = _ansi_c_quotes(text[:MAX_TEXT].replace("\\\n", " "))
        text, documents = heredocs(text)
        for kind, head, script in documents:  # bash <<EOF … EOF: the shell runs the document
            if kind == "python":  # python - <<EOF: read as python -c
                self.found.append(Command([head, "-c", script], self.cwd))
            elif kind == "shell":
                self.sub().run(script, depth + 1)
        inners, text = _substitutions(text)
        for inner in inners:  # $( … ) and ` … ` run first, in a sub-shell
            self.sub().run(inner, depth + 1)
        # ${V: -5} and ${V:(-5)} are ${V:0-5} (one word: the offset is arithmetic)
        read = len(text)
        text = braces(re.sub(r"(\$\{[A-Za-z_]\w*:)(?:[ \t]+-|\(-)([0-9]+)\)?", r"\g<1>0-\2", text))
        if self.budget is not None:  # the words its braces added are read too
            text = text[:read + len(self.budget.take(text[read:read + MAX_TEXT]))]
        for simple, redirections in self._simple_commands(text):
            self._redirected(redirections)
            self.simple(simple, depth)
            if len(self.found) >= MAX_COMMANDS or self._spent():
                return
        for script in _piped_scripts(text):  # echo … | base64 -d | bash
            self.sub().run(script, depth + 1)
        for match in _CAT_INTO_SHELL.finditer(text):  # cat x.sh | bash: bash runs x.sh
            self.found.append(Command([match.group(2), match.group(1)], self.cwd))

    def _spent(self) -> bool:
        """Whether the parse's budget is spent: nothing more is expanded or read."""
        return self.budget is not None and self.budget.spent

    def _simple_commands(self, text: str) -> list[tuple[list[str], list[tuple[str, str]]]]:
        """Each simple command's words, and its redirections whose target holds a ``$``
        (operator, target)."""
        lexer = shlex.shlex(text.replace("\n", " ; "), posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        redirections: list[tuple[str, str]] = []
        commands: list[tuple[list[str], list[tuple[str, str]]]] = []
        operator = None
        try:
            for token in lexer:
                if operator is not None:  # a redirection's target is not an argument
                    if ("$" in token or self.devices and _NETWORK_DEVICE.search(token)) \
                            and len(redirections) < 16:
                        redirections.append((operator, token))
                    operator = None
                    continue
                if token in _OPERATORS or set(token) <= set(";&|()") and token:
                    if words or redirections:
                        commands.append((words, redirections))
                    words, redirections = [], []
                    continue
                if _REDIRECT.match(token) or set(token) <= set("<>&") and token:
                    if words and words[-1].isdigit():
                        words.pop()  # 2>&1: the 2 was the file descriptor
                    # sh < x.sh: the shell runs x.sh (read as `sh x.sh`)
                    if not (token == "<" and words and base(words[0]) in SHELLS and
                            all(w.startswith("-") for w in words[1:])):
                        operator = token
                    continue
                words.append(token)
        except ValueError:  # unbalanced quotes: the shell would refuse it; read what we have
            pass
        if words or redirections:
            commands.append((words, redirections))
        return commands

    def _redirected(self, redirections: list[tuple[str, str]]) -> None:
        for operator, target in redirections:
            expanded = self.expand(target)
            if (expanded != target or self.devices) and len(self.redirects) < MAX_COMMANDS:
                self.redirects.append(f"{operator} {expanded[:MAX_TEXT]}")

    def simple(self, words: list[str], depth: int) -> None:
        if self._spent():
            return
        assignments = {}
        while words and _ASSIGN.match(words[0]):
            name, value = _ASSIGN.match(words[0]).groups()
            assignments[name] = self.expand(value)
            words = words[1:]
        words = _bounded([part for w in words for part in self.split(w)], 4 * MAX_TEXT)
        if not words:
            self.vars.update(assignments)  # A=b alone sets a shell variable
            return
        if words[0] in ("cd", "pushd") and len(words) >= 2:
            self.cwd = join(self.cwd, words[1])
            return
        if words[0] in ("export", "declare", "local", "readonly", "set", "alias", "unset"):
            for word in words[1:]:
                match = _ASSIGN.match(word)
                if match:
                    self.vars[match.group(1)] = match.group(2)
            return
        if words[0] in ("eval", "source", "."):
            if words[0] == "eval":
                self.run(" ".join(words[1:]), depth + 1)
            elif len(words) > 1:  # source x.sh: this shell runs x.sh
                self.found.append(Command(list(words), self.cwd))
            return
        self.program(words, depth)

    def expand(self, word: str) -> str:
        """``word`` with the shell variables set earlier replaced, at most MAX_TEXT long (a
        chain ``B=$A$A; C=$B$B; …`` doubles at each step: cut, never built whole)."""
        budget = [MAX_TEXT]

        def bounded(value: str) -> str:
            value = value[:max(0, budget[0])]
            budget[0] -= len(value)
            return value

        def known(match):
            name = match.group(1) or match.group(2)
            return bounded(self.vars.get(name, match.group(0)))
        if "$" not in word:
            return word
        word = _PARAMETER.sub(lambda m: bounded(self._parameter(m)), word)
        budget[0] = MAX_TEXT
        return _VAR.sub(known, word)[:MAX_TEXT]

    def split(self, word: str) -> list[str]:
        """A word expanded, and split at the characters of ``IFS`` where an expansion made
        it (``c='ngrok,tcp,22'; IFS=,; $c``). The quotes are gone by now: a quoted "$x" is
        split too, which only matters where it names the program (then it is the program)."""
        expanded = self.expand(word)
        if expanded == word:
            return [word]
        separators = self.vars.get("IFS", " \t\n")
        if not separators:
            return [expanded]
        parts = re.split("[" + re.escape(separators) + "]+", expanded)
        return [p for p in parts if p] or [expanded]

    def _parameter(self, match: re.Match) -> str:
        """One ``${V…}`` expansion of a variable set earlier in the shell (else left as is)."""
        value = self.vars.get(match.group(1))
        if match.group("default") is not None:
            empty = value is None or (value == "" and match.group("default") == ":-")
            return match.group("fallback") if empty else value
        if value is None:
            return match.group(0)
        if match.group("offset") is not None:
            offset = -int(match.group("offset")[2:]) if match.group("offset").startswith("0-") \
                else int(match.group("offset"))
            start = max(0, len(value) + offset) if offset < 0 else offset
            length = match.group("length")
            if length is None:
                return value[start:]
            end = len(value) + int(length) if int(length) < 0 else start + int(length)
            return value[start:max(start, end)]
        if match.group("replace") is not None:
            count = -1 if match.group("replace") == "//" else 1
            return value.replace(match.group("old"), match.group("new"), count)
        affix, strip = match.group("affix"), match.group("strip")
        if strip.startswith("#"):
            return value[len(affix):] if value.startswith(affix) else value
        return value[:-len(affix)] if value.endswith(affix) else value

    # ------------------------------------------------------------ programs

    def program(self, argv: list[str], depth: int) -> None:
        if not argv or depth > MAX_DEPTH or len(self.found) >= MAX_COMMANDS or self._spent():
            return
        self.found.append(Command(list(argv), self.cwd))
        name = base(argv[0])
        if name in SHELLS:
            self._shell(argv, depth)
        elif _LOADER.match(name):  # --list and --verify only read the program
            inner = [] if {"--list", "--verify"} & set(argv) else \
                _after_options(argv, _LOADER_OPTIONS)
            if inner:
                self.program(inner, depth + 1)
        elif name == "flock" and ({"-c", "--command"} & set(argv)):  # its command: a script
            at = next(i for i, word in enumerate(argv) if word in ("-c", "--command"))
            if at + 1 < len(argv):
                self.run(argv[at + 1], depth + 1)
        elif name in _WRAPPERS:
            inner = _unwrap(name, argv)
            if name == "env":
                inner = _env(argv, self)
            if inner:
                self.program(inner, depth + 1)
        elif name == "find" and ("-exec" in argv or "-execdir" in argv):
            at = argv.index("-exec") if "-exec" in argv else argv.index("-execdir")
            inner = [w for w in argv[at + 1:] if w not in (";", "+", "{}")]
            if inner:
                self.program(inner, depth + 1)
        elif name in _SCRIPTING:  # awk 'BEGIN{system("…")}', perl -e 'system "…"', node -e …
            for script in _scripted_commands(" ".join(argv[1:])):
                self.run(script, depth + 1)
        elif name == "screen":
            inner = _after_options(argv, {"-S", "-c", "-L", "-Logfile", "-t", "-p", "-X"},
                                   value_letters="Sctp")
            if inner:
                self.program(inner, depth + 1)
        elif name == "tmux":
            for i, word in enumerate(argv):
                if word in ("new", "new-session", "new-window", "split-window", "send-keys",
                            "send"):
                    rest = _after_options(["tmux", *argv[i + 1:]],
                                          {"-s", "-n", "-t", "-c", "-x", "-y", "-F", "-e"})
                    if rest:
                        self.run(" ".join(rest), depth + 1)
                    break

    def _shell(self, argv: list[str], depth: int) -> None:
        """``bash -c 'script' [name args]``, ``sh -lc …``, ``busybox sh -c …``."""
        args = argv[1:]
        if base(argv[0]) == "busybox" and args:
            self.program(args, depth + 1)
            return
        at = _script_at(args)  # None for bash script.sh: the script is a file we cannot read
        if at is not None:
            self.sub().run(_positional(args[at], args[at + 1:]), depth + 1)


_SCRIPTING = {"awk", "gawk", "mawk", "nawk", "busybox", "perl", "ruby", "node", "nodejs", "php", "lua",
              "Rscript"}
_SCRIPTED = re.compile(r"""(?:system|exec|execSync|spawnSync|popen|shell_exec|passthru|os\.execute)"""
                       r"""\s*\(?\s*(?:\[\s*)?(["'])(.{1,2000}?)\1""")


def _bounded(words: list[str], size: int) -> list[str]:
    """The first of ``words`` that hold ``size`` characters in all (an expanded variable
    repeated a thousand times: the program and its first arguments are what is read)."""
    kept = []
    for word in words:
        size -= len(word) + 1
        if size < 0 and kept:
            break
        kept.append(word)
    return kept


def _scripted_commands(code: str) -> list[str]:
    """The shell commands another language's one-liner runs (its system()/exec() strings)."""
    return [m.group(2) for m in _SCRIPTED.finditer(code[:MAX_TEXT])][:8]


def _unwrap(name: str, argv: list[str]) -> list[str]:
    takes_value, positionals = _WRAPPERS[name]
    rest = _after_options(argv, takes_value)
    return rest[positionals:] if len(rest) > positionals else []


def _after_options(argv: list[str], takes_value: set[str], value_letters: str = "") -> list[str]:
    i = 1
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[i + 1:]
        if not word.startswith("-") or word == "-":
            return argv[i:]
        takes = word in takes_value or (value_letters and not word.startswith("--")
                                        and word[-1] in value_letters)
        i += 2 if takes else 1
    return []


def _positional(script: str, params: list[str]) -> str:
    """``bash -c '$0 tcp 22' ngrok``: the words after the script are $0, $1…, "$@"."""
    if not params or "$" not in script:
        return script

    def value(match):
        index = int(match.group(1) or match.group(2))
        return shlex.quote(params[index]) if index < len(params) else ""
    script = re.sub(r"\$\{([0-9])\}|\$([0-9])", value, script)
    rest = " ".join(shlex.quote(p) for p in params[1:])
    return script.replace('"$@"', rest).replace("$@", rest).replace("$*", rest)


def _env(argv: list[str], shell: _Shell) -> list[str]:
    for i, word in enumerate(argv[1:], 1):  # env -S 'ngrok tcp 22': the string is split
        if word in ("-S", "--split-string") and i + 1 < len(argv):
            try:
                return [*shlex.split(argv[i + 1]), *argv[i + 2:]]
            except ValueError:
                return []
        if word.startswith("--split-string="):
            try:
                return [*shlex.split(word.split("=", 1)[1]), *argv[i + 1:]]
            except ValueError:
                return []
    rest = _after_options(argv, _WRAPPERS["env"][0])
    while rest and _ASSIGN.match(rest[0]):
        rest = rest[1:]
    return rest


def _substitutions(text: str) -> tuple[list[str], str]:
    """The commands inside ``$( … )`` and backticks (outside single quotes), and the text with
    each replaced by its output where that is plain (``$(echo xmrig)``, ``$(echo … | base64
    -d)``, ``$(echo … | rev)``), else by a placeholder word."""
    found, i, quote, out, start = [], 0, None, [], 0

    def replace(begin: int, end: int, inner: str) -> None:
        nonlocal start
        found.append(inner)
        out.append(text[start:begin])
        output = _output_of(inner)
        if quote == '"' and output.startswith("'") and output.endswith("'"):
            output = output[1:-1].replace("'\"'\"'", "'").replace('"', '\\"')  # "$(…)"
        out.append(output)
        start = end

    while i < len(text) and len(found) < 32:
        ch = text[i]
        if quote == "'":
            if ch == "'":
                quote = None
        elif ch == "'" and quote is None:
            quote = "'"
        elif ch == '"':
            quote = None if quote == '"' else '"'
        elif ch == "\\":
            i += 1
        elif (text.startswith("$(", i) and not text.startswith("$((", i)) or \
                text.startswith("<(", i) or text.startswith(">(", i):
            level, j = 1, i + 2
            while j < len(text) and level:
                level += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            replace(i, j, text[i + 2:j - 1])
            i = j
            continue
        elif ch == "`":
            end = text.find("`", i + 1)
            if end > i:
                replace(i, end + 1, text[i + 1:end])
                i = end + 1
                continue
        i += 1
    out.append(text[start:])
    return found, "".join(out)


_CAT_INTO_SHELL = re.compile(r"(?:^|[;&|(\s])cat\s+([\w./-]+)\s*\|\s*(?:sudo\s+)?"
                             r"((?:/usr)?(?:/bin/)?(?:ba|da|z|k)?sh)\s*(?:$|[;&|)\n])")
_ANSI_C = re.compile(r"\$'((?:[^'\\]|\\.){0,2000})'")


_WRITTEN_TO = re.compile(r"\bcat\b[^|;&]*?>>?\s*([\w./~-]+)|\btee\s+(?:-a\s+)?([\w./~-]+)")
_HEREDOC = re.compile(r"(?<!<)<<(-?)\s*(['\"]?)([A-Za-z_][\w-]*)\2")


def heredocs(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """A here-document is the input of its command, not commands: ``cat <<EOF > notes`` writes
    its lines, ``bash <<EOF`` (or ``sh -s``, ``python -``) runs them. The text without the
    documents, and for each document ("shell" or "python", the interpreter, the document) or
    ("file", the file ``cat >``/``tee`` writes it to, the document)."""
    if "<<" not in text:
        return text, []
    lines, kept, scripts = text.split("\n"), [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        kept.append(line)
        i += 1
        for match in _HEREDOC.finditer(line):
            strip, delimiter = match.group(1), match.group(3)
            body = []
            while i < len(lines):
                current = lines[i].lstrip("\t") if strip else lines[i]
                i += 1
                if current.strip() == delimiter:
                    break
                body.append(current)
            try:
                head = shlex.split(line[:match.start()].split("|")[-1].split(";")[-1])
            except ValueError:
                head = []
            while head and base(head[0]) in ("sudo", "nohup", "exec", "env", "command"):
                head = head[1:]
            document = "\n".join(body)
            if head and (base(head[0]) in SHELLS or PYTHONS.match(base(head[0]))) and \
                    not any(w.startswith("-") and "c" in w.lstrip("-") for w in head[1:]) and \
                    all(w.startswith("-") for w in head[1:]):
                kind = "shell" if base(head[0]) in SHELLS else "python"
                scripts.append((kind, head[0], document))
                continue
            written = _WRITTEN_TO.search(line[:match.start()] + " " + line[match.end():])
            if written:  # cat > x.sh <<EOF, cat <<EOF | tee x.sh: a file the cell writes
                scripts.append(("file", written.group(1) or written.group(2), document))
    return "\n".join(kept), scripts[:8]


#: A shell word (unquoted characters, quoted and escaped ones), at a word's start: each
#: alternative begins with a different character, so matching is linear whatever the text.
_WORD = re.compile(r"""(?<![^\s;&|()<>])(?:[^\s'"`;&|()<>\\]|\\.|'[^']*'|"(?:[^"\\]|\\.)*")+""")
_SEQUENCE = re.compile(r"^(?:(-?\d{1,6})\.\.(-?\d{1,6})|([A-Za-z])\.\.([A-Za-z]))"
                       r"(?:\.\.(-?\d{1,6}))?$")
MAX_BRACE_WORDS = 64
MAX_BRACE_NESTING = 32
MAX_BRACE_TEXT = 2 * MAX_TEXT  # characters the words of one text's brace expansions make, at most
MAX_BRACE_BUILT = 4 * MAX_BRACE_TEXT  # characters one word's expansion builds on its way, at most


def braces(text: str) -> str:
    """Bash's brace expansion of the unquoted words of ``text``: ``{ngrok,tcp,22}`` is the
    three words ``ngrok tcp 22``, ``a{b,c}d`` is ``abd acd``, ``./xm{r,}{i,}g`` starts with
    ``./xmrig``, ``{x{m,}rig,}`` nests, ``{q..r}`` is a sequence (64 words at most a word;
    quoted parts stay as they are, ``${V}`` is a parameter)."""
    if "{" not in text:
        return text
    quoted = _quoted_spans(text)
    budget = [MAX_BRACE_TEXT]

    def expanded(match):
        word = match.group(0)
        if "{" not in word or any(start < match.start() < end for start, end in quoted):
            return word
        words = [w for w in _brace_expand(word, _brace_pairs(word), 0, len(word), 0) if w]
        kept = list(itertools.takewhile(lambda w: budget.__setitem__(0, budget[0] - len(w) - 1)
                                        or budget[0] >= 0, words))
        return " ".join(kept) if kept else word
    return _WORD.sub(expanded, text)


def _brace_pairs(word: str) -> dict[int, tuple[int, list[int]]]:
    """The unquoted ``{`` … ``}`` pairs of a word that expand: opening index -> (closing index,
    the indices of its own commas); a pair with no comma is kept only as a sequence."""
    pairs, stack, at = {}, [], 0
    while at < len(word):
        ch = word[at]
        if ch == "\\":
            at += 2
            continue
        if ch in "'\"":
            close = word.find(ch, at + 1)
            while ch == '"' and close > 0 and word[close - 1] == "\\":
                close = word.find(ch, close + 1)
            at = len(word) if close < 0 else close + 1
            continue
        if ch == "{":
            stack.append((at, at > 0 and word[at - 1] == "$", []))
        elif ch == "," and stack:
            stack[-1][2].append(at)
        elif ch == "}" and stack:
            start, parameter, commas = stack.pop()
            if not parameter and (commas or _SEQUENCE.match(word[start + 1:at])):
                pairs[start] = (at, commas)
        at += 1
    return pairs


def _brace_expand(word: str, pairs: dict, begin: int, end: int, nesting: int) -> list[str]:
    """The words ``word[begin:end]`` expands to (its raw text: quotes kept), at most
    ``MAX_BRACE_WORDS``: its parts left to right, each group's alternatives expanded in turn."""
    results, literal, at, built = [""], begin, begin, 0
    while at < end:
        group = pairs.get(at)
        if group is None or group[0] >= end or nesting >= MAX_BRACE_NESTING:
            at += 1
            continue
        close, commas = group
        prefix = word[literal:at]
        if commas:
            bounds = [at, *commas, close]
            alternatives = [w for left, right in zip(bounds, bounds[1:])
                            for w in _brace_expand(word, pairs, left + 1, right, nesting + 1)]
        else:
            alternatives = _sequence(word[at + 1:close])
        results = [r + prefix + a for r, a in itertools.islice(
            itertools.product(results, alternatives), MAX_BRACE_WORDS)]
        literal = at = close + 1
        built += len(results) * len(results[0])
        # A word longer than a text, or one whose groups made more than a text's worth of
        # brace words many times over (3,000 `{a,b}` in a row: 64 words a group, each one
        # longer, cost 30 ms a parse): the rest is left as it is.
        if len(results[0]) > MAX_TEXT or built > MAX_BRACE_BUILT:
            break
    rest = word[literal:end]
    # No more words than MAX_BRACE_TEXT could hold (braces() keeps no more): 64 copies of a
    # long rest would be built for nothing.
    fit = MAX_BRACE_TEXT // (min(map(len, results)) + len(rest) + 1)
    return [r + rest for r in results[:max(1, fit)]]


def _sequence(spec: str) -> list[str]:
    """``{1..5}``, ``{01..10..2}``, ``{a..e}``: bash's sequence expression (64 items at most)."""
    match = _SEQUENCE.match(spec)
    step = abs(int(match.group(5) or 1)) or 1
    if match.group(1) is not None:
        first, last = int(match.group(1)), int(match.group(2))
        width = max(len(match.group(1)), len(match.group(2))) \
            if re.match(r"^-?0\d", match.group(1)) or re.match(r"^-?0\d", match.group(2)) else 0
        numbers = range(first, last + (1 if last >= first else -1),
                        step if last >= first else -step)
        return [str(n).zfill(width) for _, n in zip(range(MAX_BRACE_WORDS), numbers)]
    first, last = ord(match.group(3)), ord(match.group(4))
    letters = range(first, last + (1 if last >= first else -1), step if last >= first else -step)
    return [chr(c) for _, c in zip(range(MAX_BRACE_WORDS), letters)]


def _quoted_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text`` is within single or double quotes (or escaped)."""
    spans, i, quote, start = [], 0, None, 0
    while i < len(text):
        ch = text[i]
        if quote is None and ch == "\\":
            spans.append((i, i + 2))
            i += 2
            continue
        if quote is None and ch in "'\"":
            quote, start = ch, i
        elif quote == "\"" and ch == "\\":
            i += 1
        elif ch == quote:
            spans.append((start, i + 1))
            quote = None
        i += 1
    if quote is not None:
        spans.append((start, len(text)))
    return spans


def _ansi_c_quotes(text: str) -> str:
    """``$'\\x78mrig'`` is bash's quoting with escapes: replaced by what it spells, quoted."""
    if "$'" not in text:
        return text

    def decoded(match):
        try:
            value = match.group(1).encode("latin-1", "backslashreplace").decode("unicode_escape")
        except (UnicodeError, ValueError):
            return match.group(0)
        return shlex.quote(value)
    return _ANSI_C.sub(decoded, text)


def _piped_scripts(text: str) -> list[str]:
    """Scripts a line pipes into a shell when the pipe only echoes and decodes them."""
    found = []
    for line in re.split(r"[;\n]|&&|\|\|", text):
        stages = line.split("|")
        if len(stages) < 2:
            continue
        try:
            last = shlex.split(stages[-1])
        except ValueError:
            continue
        if last and base(last[0]) in SHELLS and all(w.startswith("-") and "c" not in w
                                                    for w in last[1:]):
            output = _output_of("|".join(stages[:-1]))
            if output not in ("__output__", "''"):
                try:
                    found.append(" ".join(shlex.split(output)))
                except ValueError:
                    continue
    return found[:8]


def _output_of(inner: str) -> str:
    """What a command substitution prints, when it only echoes (and decodes or reverses)."""
    try:
        stages = [shlex.split(stage) for stage in inner.split("|")]
    except ValueError:
        return "__output__"
    if not stages or not stages[0] or stages[0][0] not in ("echo", "printf"):
        return "__output__"
    words = stages[0][1:]
    escapes = stages[0][0] == "printf" or any(re.match(r"^-[nE]*e[nE]*$", w) for w in words)
    value = " ".join(w for w in words if not re.match(r"^-[neE]+$", w))
    if stages[0][0] == "printf" and words and "%" in words[0]:
        value = _printf(words[0], words[1:])
        if value is None:
            return "__output__"
    if escapes and "\\" in value:  # printf '\x78mrig', echo -e '\170mrig'
        value = re.sub(r"\\x([0-9a-fA-F]{2})|\\0?([0-7]{3})",
                       lambda m: chr(int(m.group(1), 16) if m.group(1) else int(m.group(2), 8)),
                       value)
    for stage in stages[1:]:
        if stage[:1] == ["base64"] and any(w in ("-d", "--decode", "-D") for w in stage):
            try:
                import base64
                value = base64.b64decode(value.strip() + "=" * (-len(value.strip()) % 4)
                                         ).decode("utf-8", "replace")
            except ValueError:
                return "__output__"
        elif stage[:1] == ["rev"]:
            value = value[::-1]
        elif stage[:1] == ["tr"] and len(stage) == 3:
            value = value.translate(str.maketrans(_tr_set(stage[1]), _tr_set(stage[2])))
        else:
            return "__output__"
    return shlex.quote(value.strip()) if value.strip() else "''"


def _printf(template: str, args: list[str]) -> str | None:
    """What ``printf FORMAT ARGS…`` prints with ``%s`` conversions alone: the format used again
    while arguments are left (``printf '%s' './xmr' 'ig'`` is ``./xmrig``). None: another
    conversion (a width, a number)."""
    if re.search(r"%[^s%]", template):
        return None
    parts = template.replace("%%", "\0").split("%s")
    per_use = len(parts) - 1
    if per_use == 0:
        return template.replace("\0", "%")
    out, args = [], args or [""]
    for at in range(0, min(len(args), MAX_TEXT), per_use):
        given = args[at:at + per_use] + [""] * (per_use - len(args[at:at + per_use]))
        out.append("".join(p + v for p, v in zip(parts, given + [""])))
        if sum(map(len, out)) > MAX_TEXT:
            return None
    return "".join(out).replace("\0", "%")


#: ssh's options that take a value (the destination is the first word that is neither).
_SSH_VALUES = set("bcDEeFIiJLlmOopQRSWw")
_SSH_FORWARDS = ("remoteforward", "dynamicforward", "localforward")


def ssh_config_file(argv: list[str]) -> str | None:
    """The configuration file ``ssh -F FILE`` reads."""
    for at, word in enumerate(argv[1:], 1):
        if word == "-F" and at + 1 < len(argv):
            return argv[at + 1]
        if word.startswith("-F") and len(word) > 2:
            return word[2:]
    return None


def ssh_forwards(argv: list[str], config: str) -> list[str]:
    """The forwards an ssh configuration gives the command's destination, as ``-o`` options
    (``RemoteForward 2222 localhost:22`` in a ``Host`` block that matches it, or before any
    block; a ``Match`` block is taken as matching)."""
    import fnmatch

    destination, skip = "", False
    for word in argv[1:]:
        if skip:
            skip = False
        elif word.startswith("-") and len(word) > 1:
            skip = word[-1] in _SSH_VALUES and len(word) == 2
        else:
            destination = word.rsplit("@", 1)[-1]
            break
    found, applies = [], True
    for line in config.splitlines()[:2000]:
        words = line.replace("=", " ", 1).split()
        if not words or words[0].startswith("#"):
            continue
        key = words[0].lower()
        if key == "host":
            patterns = words[1:]
            applies = any(fnmatch.fnmatchcase(destination, p) for p in patterns
                          if not p.startswith("!")) and \
                not any(fnmatch.fnmatchcase(destination, p[1:]) for p in patterns
                        if p.startswith("!"))
        elif key == "match":
            applies = True
        elif applies and key in _SSH_FORWARDS and len(words) > 1:
            found += ["-o", " ".join([words[0], *words[1:]])]
    return found[:32]


def _tr_set(spec: str) -> str:
    """``tr``'s character sets with ranges (``A-Za-z``), as rot13 spells them."""
    out, i = [], 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            out.extend(chr(c) for c in range(ord(spec[i]), ord(spec[i + 2]) + 1))
            i += 3
        else:
            out.append(spec[i])
            i += 1
    return "".join(out)


def base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if path else ""


def join(cwd: str | None, path: str) -> str | None:
    """The folder ``cd path`` leads to from ``cwd`` (None when it cannot be known)."""
    if not path or path == "-" or "$" in path:
        return None
    if path.startswith("~"):
        path = "/root" + path[1:] if path in ("~",) or path.startswith("~/") else path
    if path.startswith("/"):
        return posixpath.normpath(path)
    if cwd is None:
        return posixpath.normpath(path)
    return posixpath.normpath(posixpath.join(cwd, path))


MAX_LISTED = 4096  # entries of a folder a glob is matched against, at most
MAX_MATCHES = 64


def glob_in(folder: str, word: str) -> list[str]:
    """A word with a glob in its last part (``./xm?ig``, ``bin/t*``), resolved as bash would
    against ``folder`` (the word's relative folder below it): the matching names, sorted,
    with the word's folder; [] if it is no glob or nothing matches (bash leaves it as is).
    A glob in a folder part, or a dot file a pattern does not start with, is not matched."""
    import fnmatch

    head, _, pattern = word.rpartition("/")
    if not _GLOB.search(pattern) or _GLOB.search(head) or head.startswith("~"):
        return []
    where = os.path.join(folder, head) if head else folder
    try:
        with os.scandir(where) as entries:
            names = [e.name for _, e in zip(range(MAX_LISTED), entries)]
    except OSError:
        return []
    found = sorted(n for n in names if fnmatch.fnmatchcase(n, pattern) and
                   (pattern.startswith(".") or not n.startswith(".")))[:MAX_MATCHES]
    return [f"{head}/{n}" if head or word.startswith("/") else n for n in found]


def script_of(argv: list[str]) -> tuple[int, str] | None:
    """For ``python [opts] script.py args``: the script's index and path (not for -m / -c)."""
    if not argv or not PYTHONS.match(base(argv[0])):
        return None
    i = 1
    while i < len(argv):
        word = argv[i]
        if word in ("-m", "-c"):
            return None
        if word in ("-W", "-X", "-Q"):
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        return i, word
    return None


def python_code(argv: list[str]) -> str | None:
    """The code of ``python -c 'code'``."""
    if argv and PYTHONS.match(base(argv[0])):
        for i, word in enumerate(argv[1:-1], 1):
            if word == "-c" or (word.startswith("-") and not word.startswith("--")
                                and word.endswith("c")):
                return argv[i + 1]
            if not word.startswith("-"):
                return None
    return None


def show(argv: list[str]) -> str:
    return shlex.join(argv)
