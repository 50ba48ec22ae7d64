"""The HTML report: one file, nothing fetched, every section there, drawn in a real browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPORTED, bt
from helpers import synth_daily, write_strategy


@pytest.fixture(scope="module")
def page(reported: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    root, rid = reported
    out = tmp_path_factory.mktemp("html") / "report.html"
    code, stdout, err = bt("--data", root, "report", rid, "--format", "html", "--out", out, "--charts", "3")
    assert code == 0, err
    assert f"wrote {out}" in " ".join(stdout.split())
    return out, rid, out.read_text()


def test_the_file_is_self_contained(page: tuple[Path, str, str]) -> None:
    _, _, text = page
    # no script, style, image or font from anywhere else: no tag names another file (the scripts'
    # own text may mention addresses, e.g. Bokeh's MathJax loader; the browser test shows none is
    # fetched)
    from html.parser import HTMLParser

    refs: list[tuple[str, str]] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            refs.extend((tag, v or "") for k, v in attrs if k in ("src", "href", "srcset", "data", "poster"))

    Tags().feed(text)
    assert [r for r in refs if not r[1].startswith(("#", "data:"))] == []
    styles = re.findall(r"<style[^>]*>(.*?)</style>", text, re.S)
    assert styles and not any(re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", s) for s in styles)
    assert text.count("<script") >= 3 and "Bokeh" in text
    assert len(text.encode()) < 5_000_000


def test_every_section_is_there(page: tuple[Path, str, str], reported: tuple[Path, str]) -> None:
    _, rid, text = page
    from backtest.report import task_records

    _, records = task_records(rid, reported[0])
    for heading in ("What was run", "Leaderboard", "sharpe over the parameter grid", "Distribution",
                    "Best set per symbol against buy &amp; hold", "Equity, drawdown and trades", "Failures (1)"):
        assert heading in text, heading
    assert "Crossing" in text and "crossing.py" in text and "AAA, BBB, CCC" in text
    assert "2019-06-01 to 2021-12-31" in text
    assert "no data for this one" in text  # the failure's first line
    # every done task's key is in the leaderboard's data: each number is traceable to its task
    for r in records:
        if r["status"] == "done":
            assert r["key"] in text
    assert "<code>scale</code>: 1 value" in text and "held at the best set" not in text
    assert "re-derived and identical to the stored result" in text


def test_one_varying_parameter_draws_a_line_and_a_partial_symbol_gets_a_note(
        market: Path, tmp_path: Path) -> None:
    root = tmp_path / "bt"
    shutil.copytree(market, root)
    from backtest.data import Store

    Store(root).import_arrays("DDD", *synth_daily(7, start="2021-03-01", days=120))
    strat = write_strategy(tmp_path, REPORTED, "crossing.py")
    code, out, err = bt("--data", root, "run", strat, "--from", "2020", "--to", "2021", "--param", "fast=5",
                        "--param", "slow=20,30,50", "--executor", "inline://", "--json")
    assert code == 0, err
    assert "DDD has bars only from 2021-03-01" in " ".join(err.split())
    rid = json.loads(out)["run_id"]
    html = tmp_path / "r.html"
    code, _, err = bt("--data", root, "report", rid, "--out", html, "--tz", "America/New_York")
    assert code == 0, err
    text = html.read_text()
    assert "sharpe along slow" in text and "DDD has bars only from 2021-03-01" in text
    assert "(America/New_York)" in text and "Failures" not in text
    # three varying parameters: the third is held at the best set's value, and the page says so
    code, out, err = bt("--data", root, "run", strat, "--from", "2020", "--to", "2021", "--symbols", "AAA,BBB",
                        "--param", "fast=5,10", "--param", "slow=20,30", "--param", "scale=1,0.5",
                        "--executor", "inline://", "--json")
    assert code == 0, err
    rid = json.loads(out)["run_id"]
    code, _, err = bt("--data", root, "report", rid, "--out", html, "--x", "slow", "--y", "scale")
    assert code == 0, err
    text = html.read_text()
    assert re.search(r"held at the best set's values: <code>fast=(5|10)</code>", text)
    assert "slow across, scale up" in text


def test_the_default_name_is_the_run_id_in_the_current_folder(reported: tuple[Path, str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root, rid = reported
    monkeypatch.chdir(tmp_path)
    code, out, err = bt("--data", root, "report", rid, "--format", "html", "--charts", "0")
    assert code == 0, err
    assert (tmp_path / f"{rid}.html").is_file()
