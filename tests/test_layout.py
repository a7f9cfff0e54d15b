"""The package's shape (docs/design.md §3), and the tests and docs that keep up with it.

Sizes are the re-lay's limits (issue 13): a module past 400 lines holds two concepts, a
function past 60 lines of code (docstring, comments and blank lines aside) does too much.
The layers are checked by import-linter's contracts in ``pyproject.toml``. Every module is
imported by some test, the README's table of subpackages is their docstrings, and the design
cited is the repository's own ``docs/design.md`` (issue 28).
"""

from __future__ import annotations

import ast
import io
import pathlib
import re
import tokenize

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "iic_survey"
TESTS = REPO / "tests"
README = REPO / "README.md"
DESIGN = REPO / "docs" / "design.md"
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


# ---------------------------------------------------------------------------------------------
# Every module is imported by a test; README's layout table is the subpackages' docstrings.


def module_names() -> list[str]:
    """Dotted names of the package's modules (not its packages' ``__init__``)."""
    return sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in modules()
        if p.name != "__init__.py"
    )


def imported_by_tests() -> set[str]:
    """Every dotted name a test imports: ``from a.b import c`` counts for ``a.b`` and ``a.b.c``
    (``c`` may be a module)."""
    names: set[str] = set()
    for p in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_module_is_imported_by_a_test():
    """A module no test imports is tested, at best, by accident (issue 28)."""
    untested = sorted(set(module_names()) - imported_by_tests())
    assert not untested, f"modules that no test under tests/ imports: {untested}"


_BULLET = re.compile(r"^\s*[-*] (?::mod:`~?iic_survey\.\w+\.(\w+)`|``(\w+)``)")


def subpackage_doc(folder: pathlib.Path) -> tuple[str, list[str]]:
    """A subpackage's summary (its docstring's first paragraph, one line) and the modules its
    docstring lists, in order: ``- ``name``: ...`` / ``* :mod:`~iic_survey.sub.name` ...``
    bullets, or a NumPy-style ``Modules`` section (a name alone on a line)."""
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
    summary = " ".join(doc.split("\n\n")[0].split())
    listed: list[str] = []
    in_section = False
    for line in doc.splitlines():
        if (m := _BULLET.match(line)) is not None:
            listed.append(m.group(1) or m.group(2))
        elif line.strip() == "Modules":
            in_section = True
        elif in_section and re.fullmatch(r"\w+", line):
            listed.append(line)
    return summary, listed


def subpackages() -> list[pathlib.Path]:
    return sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))


def layout_table() -> str:
    """README's table of subpackages, generated from their docstrings."""
    rows = ["| subpackage | modules | what |", "|---|---|---|"]
    for folder in subpackages():
        summary, listed = subpackage_doc(folder)
        names = ", ".join(f"`{m}`" for m in listed)
        rows.append(f"| `{folder.name}/` | {names} | {summary.rstrip('.')} |")
    return "\n".join(rows)


def test_every_subpackage_docstring_lists_its_modules():
    """Each subpackage's ``__init__`` docstring names each of its modules once, and no other."""
    wrong = {}
    for folder in subpackages():
        _, listed = subpackage_doc(folder)
        present = {p.stem for p in folder.glob("*.py") if p.name != "__init__.py"}
        if sorted(listed) != sorted(present):
            wrong[folder.name] = {
                "missing": sorted(present - set(listed)),
                "extra or twice": sorted(set(listed) - present)
                + sorted({m for m in listed if listed.count(m) > 1}),
            }
    assert not wrong, f"subpackage docstrings out of step with their modules: {wrong}"


def test_readme_layout_table_is_the_docstrings():
    """README's "Layout" holds :func:`layout_table` verbatim, so a module added without a line
    in its subpackage's docstring, or a docstring changed, fails here with the table to paste."""
    table = layout_table()
    assert table in README.read_text(), f"README's subpackage table should read:\n\n{table}\n"


DOC_FOLDERS = ("iic_survey", "tests", "jobs", "scripts", "cluster", "docs", "bench", "benchmarks",
               "experiments")  # fmt: skip
"""Where the repository's prose lives (README.md aside); folders that do not exist are skipped."""


def prose_files() -> list[pathlib.Path]:
    found = [README]
    for folder in DOC_FOLDERS:
        found += sorted(p for p in (REPO / folder).rglob("*")
                        if p.suffix in (".py", ".md", ".sh", ".yaml", ".ipynb"))  # fmt: skip
    return [p for p in found if p not in (DESIGN, pathlib.Path(__file__).resolve())]


def test_no_reference_to_a_design_document_outside_the_repository():
    """The design lives in ``docs/design.md``, and the sections cited as ``design.md §N`` exist
    there (no ``DESIGN.md`` that only the team's shared folder has)."""
    sections = set(re.findall(r"^## (\d+)\.", DESIGN.read_text(), flags=re.M))
    stale, dangling = [], []
    for p in prose_files():
        text, name = p.read_text(), str(p.relative_to(REPO))
        stale += [name] if "DESIGN" in text else []
        dangling += [f"{name}: §{n}" for n in re.findall(r"design\.md §(\d+)", text)
                     if n not in sections]  # fmt: skip
    assert not stale, f"references to a DESIGN document not in the repository: {stale}"
    assert not dangling, f"references to sections docs/design.md does not have: {dangling}"
