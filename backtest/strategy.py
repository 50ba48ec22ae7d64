"""Strategies: the ``Strategy`` base, parameters and grids, loading a strategy file, hashing it.

A strategy is a class in a plain Python file::

    from backtest.strategy import Strategy
    from backtest.engine.indicators import sma_nb
    from backtest.engine.signals import cross_target_nb

    class SmaCross(Strategy):
        fast = 10                      # parameters: class attributes with defaults
        slow = 20
        short = False
        grid = {"fast": range(5, 55, 5), "slow": range(20, 220, 20)}

        def constraint(self):          # combinations where this is False are skipped
            return self.fast < self.slow

        def signals(self, bars):       # target position per bar in [-1, 1]
            fast = self.cached(sma_nb, bars.close, self.fast)
            slow = self.cached(sma_nb, bars.close, self.slow)
            return cross_target_nb(fast, slow, self.short)

Everything here runs before any work is dispatched: a misspelt parameter or an empty grid fails
at plan time, with a message that says what to do.
"""

from __future__ import annotations

import itertools
import os
import sys
import types
import weakref
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from backtest.errors import StrategyError, did_you_mean
from backtest.hashing import sha256_hex

if TYPE_CHECKING:
    import numpy as np

    from backtest.engine.bars import Bars
    from backtest.engine.universe import Universe

PARAM_TYPES = (bool, int, float, str)
_RESERVED = {"grid", "warmup"}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_FORMS = 'accepted forms: name=v1,v2,... or name=start:stop[:step] (inclusive), e.g. fast=5:50:5'


class Strategy:
    """Base class of user strategies (see the module docstring for an example).

    - Parameters: public class attributes whose default is a bool, int, float or str.
    - ``grid``: optional default values per parameter for a grid run.
    - ``constraint(self) -> bool``: optional; parameter combinations where it is False are skipped.
    - ``warmup``: bars the indicators need before the start date: an int, or a method of the
      parameters; by default the largest integer parameter.
    - ``signals(self, bars) -> array``: the target position per bar in [-1, 1] (fraction of equity,
      negative is short), using only data up to each bar's close. ``bars`` has ``ts`` (int64 ns),
      ``open, high, low, close, volume`` (float64) and ``start``; NaN targets are allowed before
      ``bars.start`` (warm-up, where the position is flat anyway).
    - ``self.cached(fn, *args)``: ``fn(*args)``, computed once per symbol and shared by every
      parameter combination of the grid (arrays count as the same argument when they are the
      same object, e.g. ``bars.close``).
    """

    grid: ClassVar[dict[str, Sequence[Any]]] = {}
    warmup: ClassVar[int | Callable[..., int] | None] = None
    __bt_source__: ClassVar[str] = ""
    __bt_source_hash__: ClassVar[str] = ""
    __bt_filename__: ClassVar[str] = ""
    #: set by the engine when a worker shares window indicators across warm-ups
    #: (``engine.run.SharedWindows``): what ``cached`` asks to compute them
    _bt_windows: Any = None

    def __init__(self, **params: Any) -> None:
        cls = type(self)
        names = cls.__dict__.get("__bt_param_names__")  # (kept on the class itself: made once)
        if names is None:
            names = frozenset(name for name, _ in _params_of(cls))
            type.__setattr__(cls, "__bt_param_names__", names)
        for name, value in params.items():
            if name not in names:
                raise StrategyError(_unknown(cls, name, dict(_params_of(cls))))
            setattr(self, name, value)
        self._bt_cache: dict[Any, Any] = {}

    def constraint(self) -> bool:
        return True

    def signals(self, bars: Bars) -> np.ndarray:
        raise NotImplementedError

    def cached(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, memoised in the grid-wide cache the engine hands this instance."""
        cache = self._bt_cache
        if len(args) == 2 and type(args[1]) is int and type(args[0]) not in _BY_KEY:
            key: tuple[Any, ...] = (fn, id(args[0]), args[1])  # (array, window): the usual call, keyed quickly
        else:
            key = (fn, *map(_arg_key, args))
        hit = cache.get(key)
        if hit is None:
            windows = self._bt_windows
            hit = (fn(*args) if windows is None else windows.compute(fn, args), args)  # args kept alive: ids stay unique
            cache[key] = hit
        return hit[0]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in strategy_params(type(self)))
        return f"{type(self).__name__}({inner})"


class PortfolioStrategy(Strategy):
    """Base class of portfolio strategies: many symbols, one account, shared cash.

    Parameters, ``grid``, ``constraint()``, ``warmup`` and ``self.cached`` work as for ``Strategy``.
    Instead of ``signals`` it has:

    - ``weights(self, u) -> array``: the target fraction of the account's value per symbol per bar,
      decided at that bar's close, as a float array of shape ``(len(u.ts), len(u.symbols))``. NaN
      leaves a symbol's position as it is; a row of NaN sends no orders; negative is short. The
      sum of |w| over a row may not exceed ``--leverage`` (default 1). ``u`` has ``ts`` (int64 ns,
      the union of the symbols' timestamps), ``symbols`` (in the order given), ``open, high, low,
      close, volume`` (2-D float64, bars × symbols, NaN where a symbol has no bar) and ``start``.

    Example (the top ``top`` symbols by trailing return, equal weights, rebalanced every 21 bars)::

        class Momentum(PortfolioStrategy):
            lookback = 126
            top = 2
            grid = {"lookback": range(21, 253, 21), "top": [1, 2, 3]}

            def weights(self, u):
                ret = u.close / np.roll(u.close, self.lookback, axis=0) - 1
                ...
    """

    def signals(self, bars: Bars) -> np.ndarray:
        raise StrategyError(f"{type(self).__name__} is a portfolio strategy: it has weights(self, u), not signals")

    def weights(self, u: Universe) -> np.ndarray:
        raise NotImplementedError


_BASES = (object, Strategy, PortfolioStrategy)

_BY_VALUE = (bool, int, float, str, bytes, type(None))

#: Types ``_arg_key`` does not key by identity
_BY_KEY = frozenset((*_BY_VALUE, tuple, list))


def _arg_key(arg: Any) -> Any:
    kind = type(arg)
    if kind in _BY_VALUE:
        return (kind, arg)  # 2 and 2.0 (and True) are different arguments
    if kind is tuple or kind is list:
        return (kind, tuple(_arg_key(a) for a in arg))
    return ("id", id(arg))  # arrays and other objects: by identity (kept alive by the cache)


def strategy_params(cls: type[Strategy]) -> dict[str, Any]:
    """Parameter name → default, in declaration order (base classes first)."""
    return dict(_params_of(cls))


_PARAMS: weakref.WeakKeyDictionary[type, tuple[tuple[str, Any], ...]] = weakref.WeakKeyDictionary()


def _params_of(cls: type[Strategy]) -> tuple[tuple[str, Any], ...]:
    cached = _PARAMS.get(cls)
    if cached is not None:
        return cached
    params: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass in _BASES:
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in _RESERVED:
                continue
            if isinstance(value, PARAM_TYPES):
                params[name] = value
            else:
                params.pop(name, None)
    _PARAMS[cls] = found = tuple(params.items())
    return found


def _unknown(cls: type, name: str, defaults: dict[str, Any]) -> str:
    known = ", ".join(defaults) or "none"
    return f'unknown parameter "{name}" for {cls.__name__}.{did_you_mean(name, list(defaults))} (parameters: {known})'


def _coerce(cls: type, name: str, default: Any, value: Any) -> Any:
    """``value`` as the type of ``default``, or a StrategyError saying what is expected."""
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif kind is int:
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        elif hasattr(value, "__index__") and not isinstance(value, bool):
            return int(value.__index__())
    elif kind is float:
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        elif not isinstance(value, bool) and hasattr(value, "__float__"):
            return float(value)
    else:
        return str(value)
    expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
    raise StrategyError(f"parameter {name} of {cls.__name__} must be {expected}, got {value!r}")


def _parse_values(cls: type, name: str, default: Any, text: str) -> list[Any]:
    text = text.strip()
    if not text:
        raise StrategyError(f'parameter "{name}" has no values; {_FORMS}')
    if ":" in text and not isinstance(default, str):
        if isinstance(default, bool):
            raise StrategyError(f'parameter "{name}" is true/false and takes no range; give e.g. {name}=true,false')
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise StrategyError(f'cannot read "{name}={text}": a range is start:stop or start:stop:step; {_FORMS}')
        try:
            start, stop = Decimal(parts[0]), Decimal(parts[1])
            step = Decimal(parts[2]) if len(parts) == 3 else Decimal(1)
        except InvalidOperation:
            raise StrategyError(f'cannot read "{name}={text}": range bounds must be numbers; {_FORMS}') from None
        if step <= 0:
            raise StrategyError(f'cannot read "{name}={text}": the step must be positive; {_FORMS}')
        if stop < start:
            raise StrategyError(f'"{name}={text}" is empty: stop {parts[1]} is below start {parts[0]}; {_FORMS}')
        count = int((stop - start) / step) + 1
        if count > 100_000:
            raise StrategyError(f'"{name}={text}" has {count} values; use a larger step')
        raw: list[Any] = [start + i * step for i in range(count)]
        if isinstance(default, int):
            if any(v != v.to_integral_value() for v in raw):
                raise StrategyError(f'parameter "{name}" of {cls.__name__} takes integers; "{text}" has fractions')
            return [int(v) for v in raw]
        return [float(v) for v in raw]
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise StrategyError(f'cannot read "{name}={text}": empty value in the list; {_FORMS}')
    return [_coerce(cls, name, default, item) for item in items]


def parse_param_specs(cls: type[Strategy], specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["fast=5:50:5", "slow=20,50,100", "short=true"]`` → ``{"fast": [5, 10, ...], ...}``."""
    defaults = strategy_params(cls)
    out: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not sep or not name:
            raise StrategyError(f'cannot read parameter "{spec}": expected name=values; {_FORMS}')
        if name not in defaults:
            raise StrategyError(_unknown(cls, name, defaults))
        if name in out:
            raise StrategyError(f'parameter "{name}" is given twice; put all its values in one --param {name}=...')
        out[name] = _parse_values(cls, name, defaults[name], text)
    return out


def expand_grid(cls: type[Strategy], overrides: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """Every parameter combination: values from ``overrides``, else ``cls.grid``, else the default.

    Cartesian product in declaration order (the last parameter varies fastest), duplicates
    dropped, combinations failing ``constraint`` skipped. Every dict holds every parameter.
    """
    defaults = strategy_params(cls)
    overrides = overrides or {}
    grid = getattr(cls, "grid", None) or {}
    for source, mapping in (("--param", overrides), ("grid", grid)):
        for name in mapping:
            if name not in defaults:
                raise StrategyError(f"{source}: {_unknown(cls, name, defaults)}")
    axes: list[list[Any]] = []
    for name, default in defaults.items():
        values = overrides[name] if name in overrides else list(grid[name]) if name in grid else [default]
        typed: list[Any] = []
        for value in values:
            value = _coerce(cls, name, default, value)
            if value not in typed:
                typed.append(value)
        if not typed:
            raise StrategyError(f'parameter "{name}" of {cls.__name__} has an empty list of values')
        axes.append(typed)
    names = list(defaults)
    combos = []
    total = 0
    for combo in itertools.product(*axes):
        total += 1
        params = dict(zip(names, combo, strict=True))
        if _call_user(cls, "constraint", params):
            combos.append(params)
    if not combos:
        raise StrategyError(
            f"{cls.__name__}.constraint removed every one of the {total} parameter combinations; "
            "widen the --param ranges"
        )
    return combos


def warmup_bars(cls: type[Strategy], params: dict[str, Any]) -> int:
    """Bars needed before the start date: ``cls.warmup`` (an int, or a method), else the largest
    integer parameter (e.g. the slow SMA length), else 0."""
    declared = getattr(cls, "warmup", None)
    if callable(declared):
        value = _call_user(cls, "warmup", params)
    elif declared is not None:
        value = declared
    else:
        ints = [v for v in params.values() if isinstance(v, int) and not isinstance(v, bool)]
        value = max([0, *ints])
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StrategyError(f"{cls.__name__}.warmup must be a whole number of bars >= 0, got {value!r}")
    return value


def _call_user(cls: type[Strategy], method: str, params: dict[str, Any]) -> Any:
    try:
        return getattr(cls(**params), method)()
    except StrategyError:
        raise
    except Exception as exc:
        from backtest.engine.run import user_error

        raise user_error(exc, f"{cls.__name__}.{method} raised", _renames(cls)) from exc


# ---------------------------------------------------------------------------- loading


def source_hash(source: str) -> str:
    """sha256 hex of the UTF-8 bytes of a strategy's source."""
    return sha256_hex(source.encode("utf-8"))


def load_strategy(path: str | Path, name: str | None = None) -> type[Strategy]:
    """Load the strategy class defined in the file at ``path`` (pick one by ``name`` when the file
    defines several). The class carries ``__bt_source__``, ``__bt_source_hash__``, ``__bt_filename__``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StrategyError(f"strategy file {path} does not exist") from None
    except OSError as exc:
        raise StrategyError(f"cannot read strategy file {path}: {exc.strerror or exc}") from exc
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError:
        raise StrategyError(f"strategy file {path} is not UTF-8 text") from None
    return load_strategy_text(source, path, name)


def load_strategy_text(source: str, path: str | Path, name: str | None = None) -> type[Strategy]:
    """``load_strategy`` for a file whose text the caller has read already (``bt run`` reads the
    strategy file once, and plans and ships exactly that text)."""
    from backtest.deps import homes

    path = Path(path)
    # its folder and its project's root: its own modules import as they would beside a script
    return _load(source, str(path), path.resolve(), name, homes(path))


def load_strategy_source(source: str, filename: str, name: str | None = None,
                         modules: dict[str, str] | None = None, digest: str | None = None) -> type[Strategy]:
    """Load a strategy from its source text (a worker, maybe on another host). The text is written
    to ``<cache>/strategies/<digest>/<stem>.py`` (cache: ``$BT_CACHE`` or the user cache dir) and run
    from that real file, so that ``@njit(cache=True)`` in the strategy works. ``modules``: the
    local modules it imports (path relative to their folder → text, ``backtest.deps``), written
    beside it so that it imports these and no others; ``digest``: the hash of all of that."""
    modules = modules or {}
    digest = digest or source_hash(source)
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in Path(filename).stem) or "strategy"
    folder = _cache_root() / "strategies" / digest
    real = folder / f"{stem}.py"
    for rel, text in [*modules.items(), (real.name, source)]:
        file = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise StrategyError(f"refusing a strategy module outside its folder: {rel}")
        data = text.encode("utf-8")
        if not file.is_file() or file.read_bytes() != data:
            from backtest.store.fsutil import atomic_write

            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(file, data)
    for rel in modules:  # a module of that name imported before (another strategy's) is not this one
        mod = ".".join(Path(rel).with_suffix("").parts).removesuffix(".__init__")
        old = sys.modules.get(mod)
        if old is not None and not str(getattr(old, "__file__", "") or "").startswith(str(folder) + os.sep):
            del sys.modules[mod]
    return _load(source, filename, real, name, [str(folder)])


def _cache_root() -> Path:
    env = os.environ.get("BT_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("bt", appauthor=False))


def _load(source: str, shown: str, real: Path, name: str | None, homes: Sequence[str]) -> type[Strategy]:
    digest = source_hash(source)
    modname = f"bt_strategy_{source_hash(digest + str(real))[:16]}"  # (another folder: other modules beside it)
    module = sys.modules.get(modname)
    for home in reversed(homes):  # where its own modules are imported from come first
        if home not in sys.path:
            sys.path.insert(0, home)
    if module is None:
        try:
            code = compile(source, str(real), "exec", dont_inherit=True)
        except SyntaxError as exc:
            line = (exc.text or "").strip()
            raise StrategyError(f"{shown}:{exc.lineno}: syntax error: {exc.msg}: {line}") from None
        module = types.ModuleType(modname)
        module.__file__ = str(real)
        sys.modules[modname] = module
        try:
            exec(code, module.__dict__)
        except BaseException as exc:
            del sys.modules[modname]
            if not isinstance(exc, Exception):
                raise
            from backtest.engine.run import user_error

            raise user_error(exc, f"loading {shown} raised", {str(real): shown}) from exc
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, Strategy) and v not in _BASES and v.__module__ == modname
    ]
    names = [c.__name__ for c in found]
    if name is not None:
        picked = [c for c in found if c.__name__ == name]
        if not picked:
            listed = ", ".join(names) or "none"
            raise StrategyError(f'{shown} has no strategy "{name}".{did_you_mean(name, names)} (it defines: {listed})')
        cls = picked[0]
    elif not found:
        raise StrategyError(
            f"{shown} defines no Strategy subclass; write `class MyStrategy(Strategy):` with a "
            "`signals(self, bars)` method (from backtest.strategy import Strategy)"
        )
    elif len(found) > 1:
        raise StrategyError(f"{shown} defines several strategies ({', '.join(names)}); pick one with --strategy NAME")
    else:
        cls = found[0]
    if is_portfolio(cls):
        if getattr(cls, "weights", None) is PortfolioStrategy.weights:
            raise StrategyError(f"{cls.__name__} in {shown} has no weights(self, u) method")
    elif cls.signals is Strategy.signals:
        raise StrategyError(f"{cls.__name__} in {shown} has no signals(self, bars) method")
    cls.__bt_source__ = source
    cls.__bt_source_hash__ = digest
    cls.__bt_filename__ = shown
    cls.__bt_cached_file__ = str(real)  # type: ignore[attr-defined]
    return cls


def is_portfolio(cls: type) -> bool:
    """Whether ``cls`` is a portfolio strategy (one task per parameter set over many symbols)."""
    return isinstance(cls, type) and issubclass(cls, PortfolioStrategy)


def _renames(cls: type) -> dict[str, str]:
    """Map the file a loaded strategy runs from to the name the user knows it by."""
    real = getattr(cls, "__bt_cached_file__", "")
    shown = getattr(cls, "__bt_filename__", "")
    return {real: shown} if real and shown else {}
