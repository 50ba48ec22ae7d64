"""The HTML report: one file, nothing fetched, every section there, drawn in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from browser import chromium_missing, load_offline
from helpers import bt, synth_daily, write_strategy
from reportkit import REPORTED


@pytest.fixture
def chromium() -> None:
    """Skip without a browser, except in CI (``CI`` set), where a missing browser fails the test."""
    reason = chromium_missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI: {reason}")
    pytest.skip(reason)


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


def test_a_real_browser_draws_it_offline_without_errors(page: tuple[Path, str, str], tmp_path: Path,
                                                         reported: tuple[Path, str], chromium: None) -> None:
    from backtest.report import best_per_symbol, ranked, task_records

    html, rid, text = page
    _, records = task_records(rid, reported[0])
    first = ranked(records, "sharpe")[0]
    other = next(r for r in best_per_symbol(records, "sharpe") if r["key"] != first["key"])
    label = re.search(rf'"({other["symbol"]} [^"]*best of {other["symbol"]}\))"', text)
    assert label, "the charts' menu lists each symbol's best set"
    shot = tmp_path / "report.png"
    seen = load_offline(html, shot, choose=label.group(1))
    assert seen.page_errors == [] and seen.console_errors == []
    assert seen.requests == []  # nothing but the file itself was asked for
    assert seen.canvases >= 8  # leaderboard aside: heatmaps, distribution, bars, equity, drawdown, price
    assert seen.distinct_colours > 50 and seen.ink > 0.10  # drawn, not blank
    assert "What was run" in seen.text and "Leaderboard" in seen.text
    # choosing another task in the menu swaps the charts to it: its key shows, with no error
    assert seen.after_select["picked"] is True
    assert f"task {other['key']}" in seen.after_select["codes"]
    assert f"task {first['key']}" not in seen.after_select["codes"]
    assert seen.page_errors == [] and seen.console_errors == []


def test_the_browser_check_would_catch_a_fetch_and_an_error(tmp_path: Path, chromium: None) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><p>x</p><img src="http://127.0.0.1:9/x.png"><script>throw new Error("boom")</script>'
                   '<script>window.Bokeh = {documents: [1], index: {a: 1}}</script></body></html>')
    seen = load_offline(bad)
    assert seen.requests == ["http://127.0.0.1:9/x.png"]
    assert any("boom" in e for e in seen.page_errors)
    assert seen.canvases == 0 and seen.ink < 0.01


def test_a_walk_forward_run_has_its_section_drawn_in_a_browser(root: Path, sma_path: Path, tmp_path: Path,
                                                               chromium: None) -> None:
    code, out, err = bt("--data", root, "run", sma_path, "--from", "2019", "--to", "2021", "--walk-forward",
                        "train=1y,test=6m", "--param", "fast=5,10", "--param", "slow=20,40", "--json")
    assert code == 0, err
    rid = json.loads(out.strip().splitlines()[-1])["run_id"]
    html = tmp_path / "wfo.html"
    code, _, err = bt("--data", root, "report", rid, "--format", "html", "--out", html, "--charts", "1")
    assert code == 0, err
    text = html.read_text()
    assert "<h2>Walk-forward</h2>" in text
    for sym in ("AAA", "BBB", "CCC"):
        assert f"{sym}: the chosen sets, stitched" in text
    seen = load_offline(html, tmp_path / "wfo.png")
    assert seen.page_errors == [] and seen.console_errors == [] and seen.requests == []
    assert "Walk-forward" in seen.text and "chains the folds" in seen.text
    assert seen.canvases >= 8 and seen.ink > 0.05
