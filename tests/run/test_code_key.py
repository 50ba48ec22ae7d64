"""A task's key covers all the code it runs: the strategy, the local modules it imports (shipped to
the workers with it), and the versions of the packages it imports. When the same key still makes
other bits, the run says so loudly, keeps the new result in the store and the catalog, and fails."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import bt, helped_project

from backtest.catalog import Catalog
from backtest.deps import scan, strategy_source
from backtest.store.results import ResultStore


def test_scan_follows_local_imports_and_names_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = helped_project(tmp_path / "proj")
    deps = scan(path.read_text(), path)
    assert list(deps.modules) == ["myind.py", "tools/__init__.py", "tools/scale.py", "tools/unit.py"]
    assert set(deps.packages) == {"numpy"} and deps.packages["numpy"].startswith("numpy==")  # json: stdlib
    # a module found on PYTHONPATH (sys.path) instead of beside the strategy counts the same way
    lib = tmp_path / "lib"
    lib.mkdir()
    (path.parent / "myind.py").rename(lib / "myind.py")
    monkeypatch.setattr(sys, "path", [*sys.path, str(lib)])
    assert "myind.py" in scan(path.read_text(), path).modules
    # the hash covers each part: a helper's text and a package's version
    src = strategy_source(path.read_text(), path, None)
    (path.parent / "tools" / "unit.py").write_text("ONE = 1.0  # same value, other text\n")
    assert strategy_source(path.read_text(), path, None).hash != src.hash
    (path.parent / "tools" / "unused.py").write_text("X = 2\n")
    (path.parent / "notes.py").write_text("")
    again = strategy_source(path.read_text(), path, None)
    assert strategy_source(path.read_text(), path, None).hash == again.hash


def test_a_strategy_without_imports_keeps_its_source_hash(tmp_path: Path) -> None:
    path = tmp_path / "plain.py"
    path.write_text("from backtest.strategy import Strategy\nimport math\n")
    src = strategy_source(path.read_text(), path, None)
    from backtest.hashing import sha256_hex

    assert src.hash == sha256_hex(path.read_text()) and not src.modules and not src.packages


def _run(root: Path, path: Path, *more: str) -> dict:
    code, out, err = bt("--data", root, "run", path, "--from", "2020", "--to", "2021", "--json", *more)
    assert "Traceback" not in out + err
    summary = json.loads(out.strip().splitlines()[-1])
    summary["code"] = code
    return summary


def test_helpers_import_without_pythonpath_and_changing_one_recomputes(root: Path, tmp_path: Path) -> None:
    path = helped_project(tmp_path / "proj")
    # the workers are processes of their own: they import the helpers shipped with the strategy
    first = _run(root, path)
    assert first["code"] == 0 and first["computed"] == 9, first
    assert _run(root, path)["cached"] == 9
    (path.parent / "tools" / "unused.py").write_text("X = 2\n")  # not imported: no change
    (path.parent / "notes.py").write_text("")
    assert _run(root, path)["cached"] == 9
    (path.parent / "tools" / "scale.py").write_text("from .unit import ONE\n\ndef factor():\n    return -ONE\n")
    changed = _run(root, path)
    assert changed["code"] == 0 and changed["computed"] == 9 and changed["cached"] == 0
    cat = Catalog(root / "catalog.duckdb")
    before = {(r["symbol"], r["params"]): r["total_return"] for r in cat.task_rows(first["run_id"])}
    after = {(r["symbol"], r["params"]): r["total_return"] for r in cat.task_rows(changed["run_id"])}
    assert before.keys() == after.keys() and before != after  # the flipped signal trades otherwise
    # the run keeps the helpers it ran with: bt verify recomputes from them, not from the folder
    (path.parent / "tools" / "scale.py").write_text("def factor():\n    return 0.0\n")
    code, out, err = bt("--data", root, "verify", changed["run_id"])
    assert code == 0, out + err


def test_the_same_key_making_other_bits_is_loud_and_keeps_the_new_result(root: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A strategy reading something its key cannot know about (an environment variable, which the
    sandbox lets through when told to): --force recomputes other bits."""
    monkeypatch.setenv("BT_SANDBOX_KEEP", "BT_TEST_SIGN")
    monkeypatch.setenv("BT_TEST_SIGN", "1")
    path = tmp_path / "reader.py"
    path.write_text(textwrap.dedent("""
        import os

        import numpy as np
        from backtest.strategy import Strategy

        class Reader(Strategy):
            n = 10
            grid = {"n": [5, 10]}

            def signals(self, bars):
                s = float(os.environ["BT_TEST_SIGN"])
                d = np.zeros(len(bars.close))
                d[self.n:] = bars.close[self.n:] - bars.close[:-self.n]
                return np.where(d * s > 0, 1.0, 0.0)
        """))
    assert _run(root, path)["code"] == 0
    monkeypatch.setenv("BT_TEST_SIGN", "-1")
    for executor in ("local://", "inline://"):  # a worker that stores the file, and the coordinator
        forced = _run(root, path, "--force", "--executor", executor)
        assert forced["code"] == 1 and forced["status"] == "failed", forced
        assert len(forced["differs"]) == 6 and all("trades" in d or "total_return" in d for d in forced["differs"])
        assert "the same keys" in forced["message"]
        cat = Catalog(root / "catalog.duckdb")
        store = ResultStore(root)
        for row in cat.task_rows(forced["run_id"]):  # the catalog says what the store holds
            rec = store.read(row["key"])
            assert rec.metrics["total_return"] == row["total_return"] and len(rec.trades) == row["n_trades"]
        code, out, _ = bt("--data", root, "logs", forced["run_id"])
        assert "came out different" in out and forced["differs"][0][:12] in out
        assert cat.run(forced["run_id"])["status"] == "failed"
        monkeypatch.setenv("BT_TEST_SIGN", "1")
    # bt verify names what differs for each task, and says what it means
    monkeypatch.setenv("BT_TEST_SIGN", "-1")
    code, out, _ = bt("--data", root, "verify", forced["run_id"])
    text = " ".join(out.split())
    assert code == 1 and "6 of 6 tasks differ" in text and "total_return" in text and "the same key made other bits" in text


def test_a_module_of_the_project_the_strategy_lives_in(root: Path, tmp_path: Path) -> None:
    """``from lib.ind import ...`` in proj/strategies/s.py finds proj/lib (proj has a pyproject.toml),
    with no PYTHONPATH and from any working directory; changing it recomputes."""
    proj = tmp_path / "proj"
    (proj / "lib").mkdir(parents=True)
    (proj / "strategies").mkdir()
    (proj / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    (proj / "lib" / "__init__.py").write_text("")
    (proj / "lib" / "ind.py").write_text("def sign():\n    return 1.0\n")
    path = proj / "strategies" / "s.py"
    path.write_text(textwrap.dedent("""
        import numpy as np
        from backtest.strategy import Strategy
        from lib.ind import sign

        class Proj(Strategy):
            n = 5
            grid = {"n": [5, 10]}

            def signals(self, bars):
                d = np.zeros(len(bars.close))
                d[self.n:] = bars.close[self.n:] - bars.close[:-self.n]
                return np.where(d * sign() > 0, 1.0, 0.0)
        """))
    assert "lib/ind.py" in scan(path.read_text(), path).modules
    first = _run(root, path)
    assert first["code"] == 0 and first["computed"] == 6, first
    (proj / "lib" / "ind.py").write_text("def sign():\n    return -1.0\n")
    again = _run(root, path)
    assert again["code"] == 0 and again["computed"] == 6 and again["cached"] == 0
