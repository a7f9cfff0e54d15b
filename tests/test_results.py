"""The evidence stays true: RESULTS.md's sections are stamped and current, mutations apply.

``test_every_results_section_is_stamped_current_and_written_by_a_script`` reads the committed
bench/RESULTS.md: it fails, naming the command to rerun, when a section has no provenance stamp
(``bench/results_md.py``), when the script that wrote a section has changed since (its git
blob differs from the stamp's), or when no script writes a section. ``python -m bench all
--quick --experiments`` rewrites every section (``python -m bench status`` lists what is left).
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "scripts"))
results_md = importlib.import_module("results_md")
bench_main = importlib.import_module("bench.__main__")


def _mutate():
    spec = importlib.util.spec_from_file_location("mutate", REPO / "scripts" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutate"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_results_section_is_stamped_current_and_written_by_a_script():
    text = results_md.RESULTS.read_text()
    found = results_md.problems(text, bench_main.rerun_commands())
    assert not found, "\n".join(found)


def test_every_writer_names_a_heading_its_script_writes():
    bench_text = "".join(p.read_text() for p in sorted((REPO / "bench").glob("*.py")))
    for w in bench_main.WRITERS:
        script = (REPO / w.argv[0]).read_text()
        assert w.heading in script or w.heading in bench_text, w.heading
        assert not w.experiment or w.heading != "## Cutouts (bench/bench_cutouts.py)"


def test_write_section_stamps_provenance_and_replaces_only_its_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## A (x)\n\nold a\n\n## B (y)\n\nkept\n")
    argv = ["bench/bench_cutouts.py", "--write-results", "--n-sources", "5"]
    for _ in range(2):  # a rewrite replaces the stamp, never stacks a second one
        results_md.write_section("## A (x)", "## A (x)\n\nnew a\n", path, argv)
    text = path.read_text()
    body = results_md.sections(text)["## A (x)"]
    p = results_md.read_provenance(body)
    assert p is not None and set(results_md.KEYS) <= set(p)
    assert p["command"] == ".venv/bin/python bench/bench_cutouts.py --write-results --n-sources 5"
    assert p["script_blob"] == results_md.blob_now("bench/bench_cutouts.py")
    assert len(p["commit"]) == 40 and p["cores"] >= 1 and len(p["load_before"]) == 3
    assert isinstance(p["native_bf16"], bool) and p["cpu_capability"]
    assert body.count(results_md.STAMP) == 1 and body.count("*Measured ") == 1
    assert "new a" in body and "old a" not in text
    assert results_md.sections(text)["## B (y)"] == "## B (y)\n\nkept\n"


def test_problems_name_unstamped_stale_and_orphan_sections(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n")
    results_md.write_section("## A (x)", "## A (x)\n\na\n", path, ["bench/bench_cutouts.py"])
    text = path.read_text() + "\n## B (y)\n\nhand-typed\n\n## C (z)\n\nnobody's\n"
    writers = {"## A (x)": "cmd-a", "## B (y)": "cmd-b"}
    assert results_md.problems(text, writers) == [
        "section '## B (y)' lacks provenance (no stamp): rerun `cmd-b`",
        "section '## C (z)' is written by no script: remove it or make it written",
    ]
    # the script that wrote A has changed since: A is stale
    stale = results_md.problems(text, writers, blob_of=lambda script: "0" * 40)
    assert stale[0].startswith("section '## A (x)' is stale (bench/bench_cutouts.py changed")
    assert stale[0].endswith("rerun `.venv/bin/python bench/bench_cutouts.py`")
    # a stamp missing a key is not a stamp
    p = results_md.read_provenance(text)
    short = text.replace(f'"cores": {p["cores"]}, ', "")
    assert "lacks provenance (cores)" in results_md.problems(short, writers)[0]


def test_a_mutation_that_no_longer_applies_is_named_before_any_test_runs():
    mutate = _mutate()
    m = mutate.Mutation("m", "what", "f.py", (("x = 1\n", "x = 2\n"),), ("tests/t.py",))
    pending = mutate.Mutation("p", "what", "f.py", (("y = 1\n", "y = 2\n"),), (), "branch b")
    why, later = mutate.unapplicable([m, pending], lambda path: "x = 1\nx = 1\n")
    assert why == ["m: 'x = 1' occurs 2 times in f.py, not once: update the mutation to the code"]
    assert later == [pending]  # its code has not landed: reported, not failed
    why, later = mutate.unapplicable([m, pending], lambda path: "x = 1\ny = 1\n")
    assert why == [] and later == []
    assert mutate.EXIT_CANNOT_APPLY not in (0, mutate.EXIT_SURVIVED, mutate.EXIT_BASELINE)


def test_every_mutation_applies_to_the_working_tree():
    mutate = _mutate()
    why, _ = mutate.unapplicable(list(mutate.MUTATIONS), mutate.reader(None))
    assert why == []
