"""The strategy API: loading files and source text, parameters, grids, warm-up, the indicator cache."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from backtest.errors import StrategyError
from backtest.hashing import sha256_hex
from backtest.strategy import (
    Strategy,
    expand_grid,
    load_strategy,
    load_strategy_source,
    parse_param_specs,
    source_hash,
    strategy_params,
    warmup_bars,
)

ROOT = Path(__file__).resolve().parents[1]
SMA = ROOT / "strategies" / "sma_cross.py"


def tiny_bars(n: int = 30):
    from backtest.engine import Bars

    close = np.linspace(10.0, 12.0, n)
    ts = np.arange(n, dtype=np.int64) * 86_400 * 10**9
    return Bars("T", ts, close, close, close, close, np.ones(n))


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """
    import numpy as np
    from backtest.strategy import Strategy

    class Hold(Strategy):
        level = 1.0

        def signals(self, bars):
            return np.full(len(bars), self.level)
"""


# ------------------------------------------------------------------------------------ loading


def test_load_example():
    cls = load_strategy(SMA)
    text = SMA.read_text()
    assert cls.__name__ == "SmaCross"
    assert cls.__bt_source__ == text and cls.__bt_filename__ == str(SMA)
    assert cls.__bt_source_hash__ == source_hash(text) == sha256_hex(text.encode())
    assert strategy_params(cls) == {"fast": 10, "slow": 20, "short": False}


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(StrategyError, match=r"strategy file .*nope\.py does not exist"):
        load_strategy(tmp_path / "nope.py")
    with pytest.raises(StrategyError, match="cannot read strategy file"):
        load_strategy(tmp_path)
    (tmp_path / "latin.py").write_bytes(b"x = '\xe9'\n")
    with pytest.raises(StrategyError, match="is not UTF-8"):
        load_strategy(tmp_path / "latin.py")


def test_syntax_error_names_file_line_and_text(tmp_path):
    path = write(tmp_path, "broken.py", """
        from backtest.strategy import Strategy
        class Broken(Strategy):
            def signals(self, bars) return bars
    """)
    with pytest.raises(StrategyError) as err:
        load_strategy(path)
    message = str(err.value)
    assert message.startswith(f"{path}:4: syntax error")
    assert "def signals(self, bars) return bars" in message and "\n" not in message


def test_error_while_importing(tmp_path):
    path = write(tmp_path, "boom.py", """
        from backtest.strategy import Strategy
        RATIO = 1 / 0
    """)
    with pytest.raises(StrategyError) as err:
        load_strategy(path)
    assert str(err.value) == f"loading {path} raised ZeroDivisionError: division by zero ({path}:3)"
    assert "RATIO = 1 / 0" in err.value.details and "backtest/strategy.py" not in err.value.details


def test_no_strategy_one_of_several_and_picking(tmp_path):
    none = write(tmp_path, "none.py", "x = 1\n")
    with pytest.raises(StrategyError, match="defines no Strategy subclass; write `class MyStrategy"):
        load_strategy(none)
    two = write(tmp_path, "two.py", GOOD + """
    class Flat(Hold):
        level = 0.0
    """)
    with pytest.raises(StrategyError) as err:
        load_strategy(two)
    assert "defines several strategies (Hold, Flat); pick one with --strategy NAME" in str(err.value)
    assert load_strategy(two, "Flat").__name__ == "Flat"
    with pytest.raises(StrategyError, match='has no strategy "Flot". Did you mean "Flat"'):
        load_strategy(two, "Flot")


def test_imported_strategies_do_not_count(tmp_path, monkeypatch):
    write(tmp_path, "shared_base.py", GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path, "mine.py", """
        from shared_base import Hold

        class Half(Hold):
            level = 0.5
    """)
    assert load_strategy(path).__name__ == "Half"


def test_signals_required(tmp_path):
    path = write(tmp_path, "lazy.py", """
        from backtest.strategy import Strategy
        class Lazy(Strategy):
            n = 3
    """)
    with pytest.raises(StrategyError, match="Lazy in .*lazy.py has no signals"):
        load_strategy(path)


def test_load_source_via_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BT_CACHE", str(tmp_path / "cache"))
    source = textwrap.dedent(GOOD).replace("Hold", "HoldFromSource")
    cls = load_strategy_source(source, "/elsewhere/my strat.py")
    digest = source_hash(source)
    cached = tmp_path / "cache" / "strategies" / digest / "my_strat.py"
    assert cached.read_bytes() == source.encode()
    assert cls.__bt_filename__ == "/elsewhere/my strat.py" and cls.__bt_source_hash__ == digest
    assert cls.__bt_source__ == source and cls.__name__ == "HoldFromSource"


def test_njit_cache_works_in_a_loaded_strategy(tmp_path, monkeypatch):
    monkeypatch.setenv("BT_CACHE", str(tmp_path / "cache"))
    source = textwrap.dedent("""
        import numpy as np
        from numba import njit
        from backtest.strategy import Strategy

        @njit(cache=True)
        def double_nb(x):
            return x * 2.0

        class Doubler(Strategy):
            def signals(self, bars):
                return double_nb(np.zeros(len(bars)))
    """)
    cls = load_strategy_source(source, "doubler.py")
    assert np.all(cls().signals(tiny_bars()) == 0.0)
    folder = tmp_path / "cache" / "strategies" / source_hash(source)
    if os.environ.get("NUMBA_DISABLE_JIT") != "1":
        assert list(folder.glob("__pycache__/doubler.double_nb-*.nbi")), list(folder.rglob("*"))


def test_traceback_of_a_source_strategy_names_the_original_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BT_CACHE", str(tmp_path / "cache"))
    source = textwrap.dedent("""
        from backtest.strategy import Strategy

        class Fails(Strategy):
            def signals(self, bars):
                return bars.close / missing
    """)
    cls = load_strategy_source(source, "/home/me/fails.py")
    from backtest.engine import SimSettings, run_grid
    (err,) = run_grid(cls, tiny_bars(), [{}], SimSettings())
    assert isinstance(err, StrategyError)
    assert str(err).endswith("NameError: name 'missing' is not defined (/home/me/fails.py:6)")
    assert 'File "/home/me/fails.py", line 6, in signals' in err.details
    assert "return bars.close / missing" in err.details and str(tmp_path) not in err.details


# --------------------------------------------------------------------------------- parameters


class Base(Strategy):
    fast = 10
    _private = 3
    label = "x"

    def signals(self, bars):
        return np.zeros(len(bars))


class Child(Base):
    slow = 20
    k = 2.0
    short = False
    grid = {"fast": [5, 10]}
    warmup = None

    def constraint(self):
        return self.fast < self.slow


def test_params_in_declaration_order():
    assert strategy_params(Child) == {"fast": 10, "label": "x", "slow": 20, "k": 2.0, "short": False}


def test_parse_specs():
    got = parse_param_specs(Child, ["fast=5:50:5", "slow=20,50,100", "short=true", "k=0.1:0.5:0.1", "label=a,b"])
    assert got == {
        "fast": [5, 10, 15, 20, 25, 30, 35, 40, 45, 50],
        "slow": [20, 50, 100],
        "short": [True],
        "k": [0.1, 0.2, 0.3, 0.4, 0.5],  # exactly as written, no 0.30000000000000004
        "label": ["a", "b"],
    }
    assert parse_param_specs(Child, ["short=yes,no,1,0,False"])["short"] == [True, False, True, False, False]
    assert parse_param_specs(Child, ["fast=3:5"])["fast"] == [3, 4, 5]
    assert parse_param_specs(Child, ["k=1"])["k"] == [1.0] and type(parse_param_specs(Child, ["k=1"])["k"][0]) is float


@pytest.mark.parametrize(
    "spec,message",
    [
        (["fsat=5"], 'unknown parameter "fsat" for Child. Did you mean "fast"?'),
        (["fast=5:1:0"], "the step must be positive; accepted forms: name=v1,v2,... or name=start:stop[:step]"),
        (["fast=5:1"], '"fast=5:1" is empty: stop 1 is below start 5'),
        (["fast=a:b"], "range bounds must be numbers"),
        (["fast=1:2:3:4"], "a range is start:stop or start:stop:step"),
        (["fast="], 'parameter "fast" has no values'),
        (["fast=5,,6"], "empty value in the list"),
        (["fast=5.5"], "parameter fast of Child must be an integer, got '5.5'"),
        (["fast=1:2:0.5"], "takes integers"),
        (["short=maybe"], "parameter short of Child must be true or false"),
        (["short=0:1"], "takes no range"),
        (["k=abc"], "parameter k of Child must be a number"),
        (["fast"], 'cannot read parameter "fast": expected name=values'),
        (["fast=5", "fast=6"], 'parameter "fast" is given twice'),
    ],
)
def test_parse_spec_errors(spec, message):
    with pytest.raises(StrategyError) as err:
        parse_param_specs(Child, spec)
    assert message in str(err.value)


def test_expand_grid_product_order_constraint():
    combos = expand_grid(Child, {"slow": [6, 20], "short": [False, True]})
    # fast from Child.grid, label/k defaults; last parameter varies fastest; (10, 6) skipped
    assert combos == [
        {"fast": 5, "label": "x", "slow": 6, "k": 2.0, "short": False},
        {"fast": 5, "label": "x", "slow": 6, "k": 2.0, "short": True},
        {"fast": 5, "label": "x", "slow": 20, "k": 2.0, "short": False},
        {"fast": 5, "label": "x", "slow": 20, "k": 2.0, "short": True},
        {"fast": 10, "label": "x", "slow": 20, "k": 2.0, "short": False},
        {"fast": 10, "label": "x", "slow": 20, "k": 2.0, "short": True},
    ]
    assert expand_grid(Child, {"fast": [5, 5, 10]}) == expand_grid(Child)  # duplicates dropped
    assert len(expand_grid(load_strategy(SMA))) == 90


def test_expand_grid_errors():
    with pytest.raises(StrategyError, match="constraint removed every one of the 2 parameter combinations"):
        expand_grid(Child, {"slow": [1]})
    with pytest.raises(StrategyError, match="parameter slow of Child must be an integer, got 2.5"):
        expand_grid(Child, {"slow": [2.5]})

    class BadGrid(Child):
        grid = {"fsat": [1]}

    with pytest.raises(StrategyError, match='grid: unknown parameter "fsat" for BadGrid. Did you mean "fast"'):
        expand_grid(BadGrid)

    class Raises(Child):
        def constraint(self):
            raise RuntimeError("nope")

    with pytest.raises(StrategyError, match=r"Raises.constraint raised RuntimeError: nope \(.*test_strategy.py:\d+\)"):
        expand_grid(Raises)


def test_numpy_values_in_a_grid_become_python_values():
    class Np(Child):
        grid = {"fast": np.arange(5, 8), "k": np.array([1.5])}

    combos = expand_grid(Np)
    assert [type(c["fast"]) for c in combos] == [int, int, int] and type(combos[0]["k"]) is float


def test_warmup():
    assert warmup_bars(Child, {"fast": 10, "slow": 30, "k": 2.0, "short": True, "label": "x"}) == 30

    class Declared(Child):
        warmup = 7

    class Method(Child):
        def warmup(self):
            return 3 * self.slow

    class Wrong(Child):
        warmup = -1

    assert warmup_bars(Declared, {"slow": 30}) == 7
    assert warmup_bars(Method, {"slow": 30}) == 90
    with pytest.raises(StrategyError, match="warmup must be a whole number of bars"):
        warmup_bars(Wrong, {})


def test_unknown_keyword_on_construction():
    with pytest.raises(StrategyError, match='unknown parameter "slw" for Child. Did you mean "slow"'):
        Child(slw=3)
    assert repr(Child(fast=3)) == "Child(fast=3, label='x', slow=20, k=2.0, short=False)"


def test_cached_memoises_by_function_and_arguments():
    calls = []

    def f(x, n):
        calls.append(n)
        return x * n

    a = np.arange(3.0)
    s, t = Child(), Child()
    t._bt_cache = s._bt_cache  # the engine hands one cache to a whole grid
    first = s.cached(f, a, 2)
    assert t.cached(f, a, 2) is first and calls == [2]
    s.cached(f, a, 2.0)  # 2.0 is not 2: another key
    s.cached(f, a.copy(), 2)  # another array object: another key
    assert calls == [2, 2.0, 2]
