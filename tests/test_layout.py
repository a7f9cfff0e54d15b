"""The package's shape: module and function sizes, and the import layers (DESIGN §3).

Sizes are the re-lay's limits (issue 13): a module past 400 lines holds two concepts, a
function past 60 lines of code (docstring, comments and blank lines aside) does too much.
The layers are checked by import-linter's contracts in ``pyproject.toml``.
"""

from __future__ import annotations

import ast
import io
import pathlib
import tokenize

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "iic_survey"
MAX_MODULE_LINES = 400
MAX_FUNCTION_CODE_LINES = 60
MAX_PARAMETERS = 6


def code_lines(source: str, node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of ``node`` that hold code: no docstring, comment-only or blank lines."""
    lines = source.splitlines()[node.lineno - 1 : node.end_lineno]
    doc = ast.get_docstring(node, clean=False)
    skip: set[int] = set()
    if doc is not None:
        first = node.body[0]
        skip = set(range(first.lineno - node.lineno, first.end_lineno - node.lineno + 1))
    comment_only: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
        if tok.type == tokenize.COMMENT and not lines[tok.start[0] - 1][: tok.start[1]].strip():
            comment_only.add(tok.start[0] - 1)
    return sum(
        1
        for i, line in enumerate(lines)
        if line.strip() and i not in skip and i not in comment_only
    )


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_the_limit():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_the_limit():
    long = {}
    for p in modules():
        source = p.read_text()
        for fn in functions(ast.parse(source)):
            if (n := code_lines(source, fn)) > MAX_FUNCTION_CODE_LINES:
                long[f"{p.relative_to(PACKAGE)}:{fn.lineno} {fn.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_CODE_LINES} lines of code: {long}"


def test_no_function_takes_more_than_six_parameters():
    """Past six, the parameters are a config object waiting to be named (STYLE.md 3)."""
    wide = {}
    for p in modules():
        for fn in functions(ast.parse(p.read_text())):
            names = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)]
            n = len([a for a in names if a not in ("self", "cls")])
            if n > MAX_PARAMETERS:
                wide[f"{p.relative_to(PACKAGE)}:{fn.lineno} {fn.name}"] = n
    assert not wide, f"functions with more than {MAX_PARAMETERS} parameters: {wide}"


def test_code_lines_counts_code_only():
    source = '''def f():
    """Doc.

    More doc.
    """
    # a comment
    x = 1  # trailing comments count with their code

    return x
'''
    fn = next(functions(ast.parse(source)))
    assert code_lines(source, fn) == 3


def test_no_module_imports_our_own_code_inside_a_function():
    """Imports of our own modules sit at the top, where the import graph can see them."""
    hidden = []
    for p in modules():
        for fn in functions(ast.parse(p.read_text())):
            for node in ast.walk(fn):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                if (module or "").startswith("iic_survey"):
                    hidden.append(f"{p.relative_to(PACKAGE)}:{node.lineno}")
    assert not hidden, f"function-local imports of iic_survey: {hidden}"
