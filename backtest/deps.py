"""The code a strategy runs besides bt: the local modules it imports, and the packages it imports.

A task's key must change when anything that can change its result changes. The strategy file is
not enough: a strategy may import helper modules that live next to it, on ``PYTHONPATH`` or in
the project it belongs to, and packages installed in the Python environment. ``scan`` reads the
strategy's ``import`` statements (without running it) and follows them:

- a module found in the strategy's folder, in the project it lives in, or on ``sys.path``
  outside the Python installation is
  *local*: its source is part of the strategy (``modules``: path relative to the folder it was found
  in → text), its own imports are followed the same way, and the modules go to the workers with
  the strategy, so a worker on another host imports exactly these files;
- a module of the installation's ``site-packages`` is a *package*: its distribution's version is
  part of the strategy (``packages``: top-level module name → ``dist==version``);
- the standard library and bt itself are covered by the interpreter and by bt's engine version.

Imports made by name at run time (``importlib.import_module(name)``, ``__import__``) are not
seen; a strategy that needs them should import the module by a plain ``import`` statement.
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from importlib.machinery import PathFinder
from pathlib import Path

from backtest.spec import StrategySource, code_hash

__all__ = ["Deps", "homes", "scan", "search_path", "strategy_source"]

_BT = "backtest"


class Deps:
    """What ``scan`` found: ``modules`` (relative path → source) and ``packages`` (name → dist==version)."""

    __slots__ = ("modules", "packages")

    def __init__(self) -> None:
        self.modules: dict[str, str] = {}
        self.packages: dict[str, str] = {}


def _installation() -> tuple[list[str], list[str]]:
    """(standard library folders, package folders) of this interpreter."""
    paths = sysconfig.get_paths()
    stdlib = {paths["stdlib"], paths["platstdlib"]}
    packages = {paths["purelib"], paths["platlib"]}
    packages.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    return [str(Path(p).resolve()) for p in stdlib], [str(Path(p).resolve()) for p in packages]


def _under(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def _imports(tree: ast.AST, package: str) -> list[str]:
    """Absolute dotted names a module imports (``package``: the module's own package, for
    relative imports). ``from a import b`` gives ``a`` and ``a.b`` (b may be a submodule)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts):
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                mod = ".".join(p for p in (base, node.module or "") if p)
            else:
                mod = node.module or ""
            if mod:
                names.append(mod)
            names += [f"{mod}.{a.name}" if mod else a.name for a in node.names if a.name != "*"]
    return names


def _version(top: str) -> str | None:
    import importlib.metadata as md

    try:
        return f"{top}=={md.version(top)}"
    except md.PackageNotFoundError:
        pass
    dists = md.packages_distributions().get(top) or []
    for dist in dists:
        try:
            return f"{dist}=={md.version(dist)}"
        except md.PackageNotFoundError:
            continue
    return None


_PROJECT_MARKS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


def homes(path: Path) -> list[str]:
    """The folders a strategy's own modules are imported from: its folder, and the root of the
    project it lives in (the nearest folder above it with a pyproject.toml, setup.py, setup.cfg or
    .git), if any."""
    folder = path.resolve().parent
    for above in folder.parents:
        if any((above / mark).exists() for mark in _PROJECT_MARKS):
            return [str(folder), str(above)]
    return [str(folder)]


def search_path(path: Path) -> list[str]:
    """Where a strategy's imports are looked for: its ``homes``, then ``sys.path`` (which holds
    ``PYTHONPATH``)."""
    first = homes(path)
    return first + [p for p in sys.path if p and str(Path(p).resolve()) not in first]


def scan(source: str, path: Path) -> Deps:
    """The local modules and packages the strategy ``source`` (the file at ``path``) imports."""
    deps = Deps()
    stdlib, site = _installation()
    search = search_path(path)
    roots: dict[str, str] = {}  # top-level name → the folder its local module was found in
    seen: set[str] = set()
    todo: list[tuple[str, str]] = []  # (source, package of that source)

    def follow(text: str, package: str, shown: str) -> None:
        try:
            tree = ast.parse(text, shown)
        except SyntaxError:
            return  # the strategy itself is compiled (and a syntax error reported) when it is loaded
        for name in _imports(tree, package):
            visit(name)

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        top = name.partition(".")[0]
        if top == _BT or top in sys.builtin_module_names or top == "__future__":
            return
        if top not in roots:
            if top in seen and top != name:
                return  # the top level is not local (a package or the standard library)
            spec = PathFinder.find_spec(top, search)
            origin = spec.origin if spec is not None else None
            locations = list(spec.submodule_search_locations or []) if spec is not None else []
            where = origin if origin and origin not in ("built-in", "frozen") else (locations[0] if locations else None)
            if where is None:
                return  # not importable here: the strategy's own load reports it
            resolved = str(Path(where).resolve())
            if _under(resolved, stdlib) and not _under(resolved, site):
                seen.add(top)
                return
            if _under(resolved, site):
                seen.add(top)
                version = _version(top)
                if version:
                    deps.packages[top] = version
                return
            root = Path(where).parent if origin and origin not in ("built-in", "frozen") else Path(where)
            if spec is not None and spec.submodule_search_locations is not None:
                root = Path(locations[0]).parent
            roots[top] = str(root)
            add(top)
        if name != top:
            parts = name.split(".")
            for i in range(2, len(parts) + 1):
                add(".".join(parts[:i]))

    def add(module: str) -> None:
        """Keep the source of a local module (and of its packages' ``__init__``), if it is a file."""
        root = Path(roots[module.partition(".")[0]])
        rel = Path(*module.split("."))
        for candidate, package in ((rel / "__init__.py", module), (rel.with_suffix(".py"), module.rpartition(".")[0])):
            file = root / candidate
            key = candidate.as_posix()
            if key in deps.modules:
                return
            if file.is_file():
                text = file.read_text(encoding="utf-8")
                deps.modules[key] = text
                todo.append((text, package))
                return

    follow(source, "", str(path))
    while todo:
        text, package = todo.pop()
        follow(text, package, package)
    deps.modules = dict(sorted(deps.modules.items()))
    deps.packages = dict(sorted(deps.packages.items()))
    return deps


def strategy_source(text: str, path: Path, name: str | None) -> StrategySource:
    """The ``StrategySource`` of the strategy file at ``path`` whose text is ``text``: with the local
    modules and packages it imports, and the hash of all of it."""
    from backtest.hashing import sha256_hex

    deps = scan(text, path)
    digest = code_hash(sha256_hex(text), deps.modules, deps.packages)
    return StrategySource(digest, text, path.name, name or "", deps.modules, deps.packages)
