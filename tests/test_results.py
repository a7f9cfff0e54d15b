"""The evidence stays true: RESULTS.md's sections are stamped and current, mutations apply.

``test_every_results_section_is_stamped_current_and_written_by_a_script`` reads the committed
RESULTS files (benchmarks/RESULTS.md, experiments/RESULTS.md): it fails, naming the command to
rerun, when a section has no provenance stamp (``benchmarks/results.py``), when the script that
wrote a section has changed since (its git blob differs from the stamp's), or when no script
writes a section. ``python -m benchmarks all --quick --experiments`` rewrites every section
(``python -m benchmarks status`` lists what is left).
"""

from __future__ import annotations

import math
import pathlib

import pytest

from benchmarks import __main__ as benchmarks_main
from benchmarks import results as results_md
from scripts import mutate

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", [results_md.RESULTS, results_md.EXPERIMENTS])
def test_every_results_section_is_stamped_current_and_written_by_a_script(path):
    text = path.read_text() if path.exists() else ""
    found = results_md.problems(text, benchmarks_main.rerun_commands_of(path))
    assert not found, "\n".join(found)


def _source(module: str) -> str:
    """The text of a module run as ``python -m module``: its file, or every file of a package."""
    path = REPO / module.replace(".", "/")
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    return "".join(f.read_text() for f in files)


def test_every_writer_names_a_heading_its_script_writes():
    for w in benchmarks_main.WRITERS:
        assert w.argv[0] == "-m", w.argv  # every writer runs as a module of the repository
        assert w.heading in _source(w.argv[1]), w.heading
        assert w.results == (results_md.EXPERIMENTS if w.argv[1].startswith("experiments.")
                             else results_md.RESULTS), w.heading  # fmt: skip
        assert not w.experiment or w.heading != "## Cutouts (benchmarks/cutouts.py)"


def test_each_feeding_layout_writes_a_section_of_its_own():
    from benchmarks import feeding

    def heading(*argv: str) -> str | None:
        return feeding.section(feeding.parser().parse_args(list(argv)))

    layouts = [heading(), heading("--actors", "4", "--num-cpus", "6"), heading("--gpus", "1")]
    assert len(set(layouts)) == 3  # a GPU or 4-actor run never overwrites the 2-actor section
    assert set(layouts) <= {w.heading for w in benchmarks_main.WRITERS}
    assert heading("--actors", "3") is None
    with pytest.raises(SystemExit):  # refused before anything runs
        feeding.main(["--actors", "3", "--write-results"])


def test_the_feeding_break_even_size_is_where_the_whole_job_meets_its_goal():
    from benchmarks.feeding import break_even

    fixed, rate, goal = 20.0, 7188.0, 0.7 * 6012.0  # CPU-s, sources per CPU-s
    n = break_even(fixed, rate, goal)
    assert n / (n / rate + fixed) == pytest.approx(goal)
    assert (n * 0.9) / (n * 0.9 / rate + fixed) < goal < (n * 1.1) / (n * 1.1 / rate + fixed)
    assert break_even(fixed, goal * 0.99, goal) == float("inf")  # never, at any size
    assert break_even(0.0, rate, goal) == 0.0  # no fixed costs: at any size
    assert math.isnan(break_even(fixed, float("nan"), goal))  # an unresolved rate


def test_the_gpu_sections_run_only_when_asked(capsys):
    gpu = [w for w in benchmarks_main.WRITERS if w.gpu]
    assert {"## GPU inference (benchmarks/gpu.py)"} < {w.heading for w in gpu}
    assert [rc for _, rc, _ in benchmarks_main.run_all(gpu, quick=True)] == [-1] * len(gpu)
    assert "needs a GPU" in capsys.readouterr().out


def test_write_section_stamps_provenance_and_replaces_only_its_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## A (x)\n\nold a\n\n## B (y)\n\nkept\n")
    argv = [str(REPO / "benchmarks/cutouts.py"), "--write-results", "--n-sources", "5"]
    for _ in range(2):  # a rewrite replaces the stamp, never stacks a second one
        results_md.write_section("## A (x)", "## A (x)\n\nnew a\n", path, argv)
    text = path.read_text()
    body = results_md.sections(text)["## A (x)"]
    p = results_md.read_provenance(body)
    assert p is not None and set(results_md.KEYS) <= set(p)
    assert p["command"] == ".venv/bin/python -m benchmarks.cutouts --write-results --n-sources 5"
    assert p["script"] == "benchmarks/cutouts.py"
    assert p["script_blob"] == results_md.blob_now("benchmarks/cutouts.py")
    assert len(p["commit"]) == 40 and p["cores"] >= 1 and len(p["load_before"]) == 3
    assert isinstance(p["native_bf16"], bool) and p["cpu_capability"]
    assert body.count(results_md.STAMP) == 1 and body.count("*Measured ") == 1
    assert "new a" in body and "old a" not in text
    assert results_md.sections(text)["## B (y)"] == "## B (y)\n\nkept\n"


def test_a_study_run_as_a_package_is_stamped_with_the_whole_package():
    p = results_md.provenance([str(REPO / "experiments/paper/__main__.py"), "--budget", "smoke"])
    assert p["script"] == "experiments/paper"
    assert p["command"] == ".venv/bin/python -m experiments.paper --budget smoke"
    blob = results_md.blob_now("experiments/paper")
    assert p["script_blob"] == blob and len(blob) == 40
    assert results_md.blob_now("experiments/no_such_study") is None


def test_problems_name_unstamped_stale_and_orphan_sections(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n")
    results_md.write_section("## A (x)", "## A (x)\n\na\n", path, ["benchmarks/cutouts.py"])
    text = path.read_text() + "\n## B (y)\n\nhand-typed\n\n## C (z)\n\nnobody's\n"
    writers = {"## A (x)": "cmd-a", "## B (y)": "cmd-b"}
    assert results_md.problems(text, writers) == [
        "section '## B (y)' lacks provenance (no stamp): rerun `cmd-b`",
        "section '## C (z)' is written by no script: remove it or make it written",
    ]
    # the script that wrote A has changed since: A is stale
    stale = results_md.problems(text, writers, blob_of=lambda script: "0" * 40)
    assert stale[0].startswith("section '## A (x)' is stale (benchmarks/cutouts.py changed")
    assert stale[0].endswith("rerun `.venv/bin/python -m benchmarks.cutouts`")
    # a stamp missing a key is not a stamp
    p = results_md.read_provenance(text)
    short = text.replace(f'"cores": {p["cores"]}, ', "")
    assert "lacks provenance (cores)" in results_md.problems(short, writers)[0]


def test_a_mutation_that_no_longer_applies_is_named_before_any_test_runs():
    m = mutate.Mutation("m", "what", "f.py", (("x = 1\n", "x = 2\n"),), ("tests/t.py",))
    pending = mutate.Mutation("p", "what", "f.py", (("y = 1\n", "y = 2\n"),), (), "branch b")
    why, later = mutate.unapplicable([m, pending], lambda path: "x = 1\nx = 1\n")
    assert why == ["m: 'x = 1' occurs 2 times in f.py, not once: update the mutation to the code"]
    assert later == [pending]  # its code has not landed: reported, not failed
    why, later = mutate.unapplicable([m, pending], lambda path: "x = 1\ny = 1\n")
    assert why == [] and later == []
    assert mutate.EXIT_CANNOT_APPLY not in (0, mutate.EXIT_SURVIVED, mutate.EXIT_BASELINE)


def test_every_mutation_applies_to_the_working_tree():
    why, _ = mutate.unapplicable(list(mutate.MUTATIONS), mutate.reader(None))
    assert why == []
