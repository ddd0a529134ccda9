"""A cell's code as it will run, in pieces the server can check.

The check reads what runs: the AST IPython hands its transformers, after every input
transformer (the user's own included), turned back into source. Comments are gone, so a
cell padded with a long comment is as short as its code. Data is not code: a long literal
(a pasted dataset, thousands of numbers, a long string) is shortened to its first items
before it is sent, so a big data cell is checked as fast as a small one. The rest is cut
into pieces of whole top-level statements, each at most ``protocol.MAX_CELL`` characters,
which the server reads in order, as it reads consecutive cells.
"""

from __future__ import annotations

import ast
import copy

from . import protocol

#: items of a constant list/tuple/set/dict kept (the rest is data the check need not read)
KEEP_ITEMS = 64
#: characters of a string constant kept: its head and its tail (a command padded in the
#: middle still reads as its words)
KEEP_CHARS = 16 * 1024
#: cells shorter than this are unparsed whole (compacting them would cost more than it saves)
COMPACT_FROM = 64 * 1024


def cell_pieces(tree: ast.Module, raw_length: int) -> list[str]:
    """The cell's code in pieces of whole statements, each at most protocol.MAX_CELL
    characters (a single statement longer than that is one piece: the server refuses it)."""
    if raw_length < COMPACT_FROM:
        code = ast.unparse(tree)
        return [code] if code.strip() else []
    pieces, current, size = [], [], 0
    for statement in tree.body:
        text = _unparse(statement)
        if current and size + len(text) + 1 > protocol.MAX_CELL:
            pieces.append("\n".join(current))
            current, size = [], 0
        current.append(text)
        size += len(text) + 1
    if current:
        pieces.append("\n".join(current))
    return pieces


def _unparse(statement: ast.stmt) -> str:
    try:
        return ast.unparse(_compact(statement))
    except RecursionError:  # nested too deep to shorten: as it is
        return ast.unparse(statement)


def _compact(node: ast.AST) -> ast.AST:
    """``node``, or a shallow copy of it whose long constant literals are shortened."""
    short = _short_literal(node)
    if short is not None:
        return short
    changed = {}
    for name, value in ast.iter_fields(node):
        if isinstance(value, ast.AST):
            new = _compact(value)
            if new is not value:
                changed[name] = new
        elif isinstance(value, list) and value and isinstance(value[0], ast.AST):
            new_list = [_compact(v) if isinstance(v, ast.AST) else v for v in value]
            if any(a is not b for a, b in zip(new_list, value)):
                changed[name] = new_list
    if not changed:
        return node
    node = copy.copy(node)
    for name, value in changed.items():
        setattr(node, name, value)
    return node


def _short_literal(node: ast.AST) -> ast.AST | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) and \
            len(node.value) > 2 * KEEP_CHARS:
        return ast.Constant(value=node.value[:KEEP_CHARS] + node.value[-KEEP_CHARS:])
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and len(node.elts) > KEEP_ITEMS \
            and all(_is_data(e) for e in node.elts):
        kept = [_compact(e) for e in node.elts[:KEEP_ITEMS]]
        return ast.Set(elts=kept) if isinstance(node, ast.Set) else \
            type(node)(elts=kept, ctx=node.ctx)
    if isinstance(node, ast.Dict) and len(node.keys) > KEEP_ITEMS and \
            all(k is not None and _is_data(k) for k in node.keys) and \
            all(_is_data(v) for v in node.values):
        return ast.Dict(keys=[_compact(k) for k in node.keys[:KEEP_ITEMS]],
                        values=[_compact(v) for v in node.values[:KEEP_ITEMS]])
    return None


def _is_data(node: ast.AST, depth: int = 0) -> bool:
    """A constant, or a container of constants: nothing in it calls or names anything."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return isinstance(node.operand, ast.Constant)
    if depth < 4 and isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_is_data(e, depth + 1) for e in node.elts)
    if depth < 4 and isinstance(node, ast.Dict):
        return all(k is not None and _is_data(k, depth + 1) for k in node.keys) and \
            all(_is_data(v, depth + 1) for v in node.values)
    return False
