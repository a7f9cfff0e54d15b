"""Progress a person sees: a bar on a terminal, nothing extra in a log."""

from __future__ import annotations

import io

from iic_survey.core.progress import Bar, interactive
from iic_survey.synthetic import skyfiles


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_draws_on_a_terminal_only() -> None:
    term, log = _Terminal(), io.StringIO()
    assert interactive(term) and not interactive(log)
    for stream in (term, log):
        with Bar(1000, "classify", "sources", stream=stream, min_interval_s=0.0) as bar:
            for _ in range(4):
                bar.update(250)
    assert log.getvalue() == ""
    lines = term.getvalue().split("\r")
    assert lines[-1].startswith("classify  [####################]  100.0 %  1,000/1,000 sources")
    assert lines[-1].endswith("\n") and " 25.0 %" in lines[1] and "[#####---" in lines[1]


def test_writing_a_sky_draws_a_bar_on_a_terminal(tmp_path, monkeypatch) -> None:
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    skyfiles.write_sky(tmp_path / "sky", skyfiles.tiny_config())
    last = term.getvalue().split("\r")[-1]
    assert last.startswith("synthetic sky  [####################]  100.0 %")
