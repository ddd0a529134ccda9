"""Branches a Colab form decides: not read when the form's values in the cell rule them out.

A Colab form field is a line ``name = "value"  #@param …``: Colab rewrites the literal in the
cell's text when the user changes the field, so the text the check reads holds the value the
cell runs with. Honest tools offer an optional tunnel behind such a field (an ngrok token left
empty, a "open in a new tab" box left unticked, an action picked from a list); with the form
as it is, that branch never runs, and reading it interrupted the honest default run.

A test is decided only when it reads nothing but form fields (or plain copies of them) and
constants (``==``, ``!=``,
``in``, ``not in``, ``not``, ``and``/``or`` of decided parts), every field is bound once in
the whole cell, before the test, and the cell has no way to rebind a name the AST does not
show: ``exec``/``eval``/``compile``/``setattr``, a namespace written through (``globals()``,
``vars()``, ``locals()``, ``__dict__``, ``user_ns``, ``sys.modules``, ``__main__``, frames),
an IPython call other than a shell escape or a folder/package magic (``%store -r``, ``%run``,
``%time x = …`` and cell magics bind names). What a branch would run, once a field is changed,
is read: the field's new literal is in the text.
"""

from __future__ import annotations

import ast
import re
from collections import Counter

_FORM_FIELD = re.compile(r"^\s*([A-Za-z_]\w*)\s*=\s*[^#]*#\s*@param\b")
_FORM_VALUES = (str, bool, int, float)
#: line magics that bind no Python name (folders, packages, the environment, display)
_SAFE_MAGICS = {"cd", "pip", "conda", "mamba", "env", "matplotlib", "load_ext", "reload_ext",
                "autoreload", "pwd", "pushd", "popd", "mkdir", "ls", "cp", "mv", "rm", "cat"}
_IPYTHON_SAFE_CALLS = {"system", "getoutput"}
_REBINDERS = {"exec", "eval", "compile", "setattr", "delattr", "__import__", "getattr",
              "import_module", "getmodule", "get_referrers", "_getframe", "currentframe", "stack"}
#: IPython's ways to bind names or run code, whatever its shell is called
_IPYTHON_BINDERS = {"push", "ex", "ev", "run_cell", "run_cell_magic", "magic", "safe_execfile",
                    "safe_execfile_ipy", "safe_run_module", "run_code", "run_ast_nodes",
                    "runcode", "get_ipython", "InteractiveShell"}
_NAMESPACES = {"globals", "vars", "locals"}
_NAMESPACE_ATTRIBUTES = {"__dict__", "user_ns", "user_global_ns", "f_globals", "f_locals",
                         "modules", "__main__", "__globals__", "__builtins__"}
_DECIDABLE_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def prune_form_branches(tree: ast.Module, source: str, memory=None) -> None:
    """Drop, in place, the branches of ``if`` statements the cell's form fields rule out.
    ``memory`` (the kernel's CellMemory): none once any cell of the kernel could rebind a name
    later without this cell's text showing it (a function declaring a name ``global``, run
    from a thread or called here; a namespace written through; a module written to disk, which
    an import runs)."""
    visible = _names_rebound_only_visibly(tree) and not any(
        isinstance(node, (ast.Global, ast.Nonlocal)) for node in ast.walk(tree))
    earlier_hidden = memory is not None and (memory.rebinds_unseen or bool(memory.files))
    if memory is not None:
        memory.rebinds_unseen = earlier_hidden or not visible
    if "@param" not in source or earlier_hidden or not visible:
        return
    fields = _form_fields(tree, source)
    if not fields:
        return
    for node in _module_level_ifs(tree):
        decided = _decided(node.test, fields, node.lineno)
        if decided is False:
            node.body = [ast.Pass(lineno=node.lineno, col_offset=node.col_offset)]
        elif decided is True:
            node.orelse = []


def _form_fields(tree: ast.Module, source: str) -> dict[str, tuple[object, int]]:
    """Top-level ``name = literal  #@param`` fields, and plain copies of them (``action =
    accion``), each bound nowhere else: name -> (value, line it is bound on)."""
    lines = source.splitlines()
    bound = _bindings(tree)
    fields = {}
    for statement in tree.body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
                and statement.lineno == statement.end_lineno <= len(lines)):
            continue
        name, value = statement.targets[0].id, statement.value
        if bound[name] != 1:
            continue
        if isinstance(value, ast.Name) and value.id in fields:
            fields[name] = (fields[value.id][0], statement.lineno)
        elif isinstance(value, ast.Constant) and isinstance(value.value, _FORM_VALUES):
            found = _FORM_FIELD.match(lines[statement.lineno - 1])
            if found and found.group(1) == name:
                fields[name] = (value.value, statement.lineno)
    return fields


def _bindings(tree: ast.AST) -> Counter:
    """How often each name is bound (or declared global/nonlocal, or deleted) anywhere."""
    bound: Counter = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound[node.id] += 1
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update({name: 2 for name in node.names})  # never a form field then
        elif isinstance(node, ast.alias):
            bound[node.asname or node.name.split(".")[0]] += 1
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound[node.name] += 1
        elif isinstance(node, ast.arg):
            bound[node.arg] += 1
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound[node.name] += 1
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound[node.name] += 1
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound[node.rest] += 1
    return bound


def _names_rebound_only_visibly(tree: ast.Module) -> bool:
    """No name of the cell can be rebound other than by a binding the AST shows."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.alias) and node.name in ("*", "__main__", "builtins"):
            return False
        if isinstance(node, ast.Name) and node.id in _REBINDERS | {"__main__", "__builtins__"}:
            return False
        if isinstance(node, ast.Attribute) and node.attr in _REBINDERS | _IPYTHON_BINDERS:
            return False  # a module's own (``IPython.get_ipython()``, ``inspect.stack()``)
        if isinstance(node, ast.Constant) and node.value == "__main__" \
                and not isinstance(parents.get(node), ast.Compare):
            return False  # the main module fetched by name (``__name__ == "__main__"`` is not)
        if _is_namespace(node) and not _only_read(node, parents):
            return False
        if _is_ipython_call(node) and node.attr not in _NAMESPACE_ATTRIBUTES \
                and not _safe_ipython_call(node, parents):
            return False
        if _is_ipython_shell(node) and not isinstance(parents.get(node), ast.Attribute):
            return False  # the shell itself kept or handed on: what it is asked is not seen
    return True


def _is_namespace(node: ast.AST) -> bool:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id in _NAMESPACES
    return isinstance(node, ast.Attribute) and node.attr in _NAMESPACE_ATTRIBUTES


def _only_read(node: ast.AST, parents: dict) -> bool:
    """A namespace only looked into: ``"x" in globals()``, ``not user_ns["_exit_code"]``,
    ``globals()[name]`` (a value read from it: the namespace itself is not handed on)."""
    if isinstance(parents.get(node), ast.Subscript) and parents[node].value is node \
            and isinstance(parents[node].ctx, ast.Load):
        return True
    parent = parents.get(node)
    if isinstance(parent, ast.Compare):
        return True
    if isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.Not):
        return True
    return isinstance(parent, (ast.If, ast.While, ast.IfExp)) and parent.test is node


def _is_ipython_shell(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "get_ipython")


def _is_ipython_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and _is_ipython_shell(node.value)


def _safe_ipython_call(node: ast.Attribute, parents: dict) -> bool:
    """A shell escape, or a line magic that binds no name (``%cd``, ``%pip``), called there."""
    if node.attr in _IPYTHON_SAFE_CALLS:
        return True
    call = parents.get(node)
    if node.attr != "run_line_magic" or not isinstance(call, ast.Call) or call.func is not node:
        return False
    magic = call.args[0] if call.args else None
    return isinstance(magic, ast.Constant) and magic.value in _SAFE_MAGICS


def _module_level_ifs(tree: ast.Module):
    """``if`` statements run with the module's names (not inside a def, class or lambda)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If):
            yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))


def _decided(test: ast.expr, fields: dict, line: int) -> bool | None:
    """The test's value when it reads only form fields bound before it and constants."""
    value = _value(test, fields, line)
    return None if value is _UNKNOWN else bool(value)


_UNKNOWN = object()


def _value(node: ast.expr, fields: dict, line: int):
    if isinstance(node, ast.Constant) and isinstance(node.value, _FORM_VALUES):
        return node.value
    if isinstance(node, ast.Name) and node.id in fields and fields[node.id][1] < line:
        return fields[node.id][0]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        value = _value(node.operand, fields, line)
        return _UNKNOWN if value is _UNKNOWN else not value
    if isinstance(node, ast.BoolOp):
        values = [_value(v, fields, line) for v in node.values]
        if any(v is _UNKNOWN for v in values):
            return _UNKNOWN  # an unknown part may run first and rebind: all parts decided
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 \
            and isinstance(node.ops[0], _DECIDABLE_OPS):
        return _compared(node.ops[0], _value(node.left, fields, line),
                         _value(node.comparators[0], fields, line))
    return _UNKNOWN


def _compared(op: ast.cmpop, left, right):
    if left is _UNKNOWN or right is _UNKNOWN:
        return _UNKNOWN
    if isinstance(op, ast.Eq):
        return left == right
    if isinstance(op, ast.NotEq):
        return left != right
    if not (isinstance(left, str) and isinstance(right, str)):
        return _UNKNOWN
    return (left in right) if isinstance(op, ast.In) else (left not in right)
