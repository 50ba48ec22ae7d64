"""The data store on object storage: S3 and compatibles, or anything ``pyarrow.fs`` opens by URI.

``--store URI`` / ``BT_STORE`` (``s3://bucket/prefix``, ``gs://...``, ``file:///shared/folder``)
puts the bars there instead of under the data root; the data root keeps the catalog, results and
caches. Layout under the URI::

    bars/manifest/000000000007.3f2a9c1b7d4e5f60.json   versions of the manifest (the highest is current)
    bars/symbol=AAPL/year=2020/<sha256>.parquet        partitions, named by their content hash

The manifest is the same document as a local store's ``manifest.json``; partition objects are the
same Parquet files, named by content so that an object is never overwritten: a reader (or a run
planned a minute ago) never sees a partition half replaced, and two importers writing the same
bars write the same object.

**Commits.** An import writes its new partition objects first, then proposes the next manifest
version as a new object ``<n+1>.<random token>.json`` (unless a version *n+1* is there already: then it
lost at once). Object stores reached through pyarrow
cannot write conditionally (S3's ``If-None-Match``/``If-Match`` are not exposed by
``pyarrow.fs``), so the rule is: of the proposals for version *n+1*, the one with the smallest
name wins. After writing its proposal a writer waits ``SETTLE`` seconds and lists the versions; if
another proposal for *n+1* sorts first it has lost: it deletes its proposal, reads the winner and
merges again (up to ``TRIES`` times, then one line: "changed by someone else during the import").
Two imports at once therefore both land, one after the other. The one case this cannot catch is a
writer that lists the versions, stalls for longer than ``SETTLE`` and only then writes a proposal
that sorts first: it would silently replace the other's version. (With conditional writes the
create-only proposal would close that gap; a store used by many writers at once should be fed by
one importer.)

**Local copies.** A run reads partitions where the workers are: before workers start, the
coordinator fetches each partition a run needs into the bars cache as ``cache/bars/<sha256>.parquet``
(and its uncompressed copy ``<sha256>.bars``), verified by content hash; ``Partition.path`` of an
object store names that local copy, so workers, SSH shipping and task keys see the same thing as
with a local store. Nothing secret is kept: URIs are recorded and shown with credentials removed.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from backtest.data.partition import Partition
from backtest.errors import DataError

MANIFESTS = "bars/manifest"
#: seconds a writer waits after proposing a manifest version before it looks who won
SETTLE = 0.25
#: how often an import merges again when another writer's version won
TRIES = 5
#: manifest versions kept (older ones are deleted after a commit)
KEEP_VERSIONS = 20
#: query parameters (and environment) that hold secrets: never shown, logged or recorded
SECRET_PARAMS = frozenset({"access_key", "secret_key", "session_token", "aws_access_key_id",
                           "aws_secret_access_key", "aws_session_token", "credential", "credentials",
                           "password", "token"})
_VERSION = re.compile(r"^(\d{12})\.([0-9a-f]{16})\.json$")


def is_local(uri: str | None) -> bool:
    return not uri


def display_uri(uri: str) -> str:
    """``uri`` without credentials: no user info, no secret query parameters."""
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in SECRET_PARAMS]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe=":/"), ""))


def object_key(p: Partition) -> str:
    """Where partition ``p`` lives under the store's URI."""
    return f"bars/symbol={p.symbol}/year={p.year}/{p.sha256}.parquet"


def local_path(sha256: str) -> str:
    """Where a run reads a partition of an object store: its copy in the bars cache (relative to
    the data root)."""
    return f"cache/bars/{sha256}.parquet"


def _with_env(uri: str) -> str:
    """``uri`` with ``BT_S3_ENDPOINT`` / ``BT_S3_REGION`` added (for s3:// when the URI has none),
    and single-request uploads (``allow_delayed_open``) for small objects."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        return uri
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    endpoint = os.environ.get("BT_S3_ENDPOINT", "").strip()
    if endpoint and "endpoint_override" not in query:
        query["endpoint_override"] = endpoint
    region = os.environ.get("BT_S3_REGION", "").strip()
    if region and "region" not in query:
        query["region"] = region
    query.setdefault("allow_delayed_open", "true")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, safe=":/"), ""))


#: attempts of one S3 request (the AWS SDKs' "standard" retry mode): a filesystem made from a URI
#: otherwise retries with the SDK's legacy strategy, ~6 s before an unreachable endpoint is said
#: to be one (~2 s so)
S3_ATTEMPTS = 3


def _patient_enough(fs: Any) -> Any:
    """``fs`` (an S3FileSystem made from a URI) again with every option it has, but the standard
    retry strategy of ``S3_ATTEMPTS`` attempts; ``fs`` itself if pyarrow will not rebuild it."""
    import pyarrow.fs as pafs

    try:
        options = dict(fs.__reduce__()[1][0])
        options["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS)
        return pafs.S3FileSystem(**options)
    except (TypeError, ValueError, IndexError, KeyError):
        return fs


def describe(exc: BaseException, where: str, action: str, kind: str = "data store",
             option: str = "--store / BT_STORE") -> DataError:
    """An error of the object store as one line that says what to do (``kind``: what the store
    is to bt, ``option``: where its URI comes from)."""
    text = str(exc)
    low = text.lower()
    aws = re.search(r"AWS Error ([A-Z_]+)(?: during (\w+) operation)?(?::\s*([^(\n]*))?", text)
    detail = (f"{aws.group(1)}{': ' + aws.group(3).strip() if aws and aws.group(3) and aws.group(3).strip() else ''}"
              if aws else text.splitlines()[0][:200] if text else type(exc).__name__)
    if any(s in low for s in ("network_connection", "curlcode", "could not connect", "couldn't connect",
                              "timed out", "timeout", "resolve host", "connection refused")):
        return DataError(f"the {kind} {where} cannot be reached while {action} ({detail}); check the "
                         "endpoint (BT_S3_ENDPOINT or ?endpoint_override=) and the network")
    if any(s in low for s in ("invalidaccesskeyid", "invalid_access_key_id", "signaturedoesnotmatch",
                              "signature_does_not_match", "invalidtoken", "invalid_token", "expiredtoken",
                              "unrecognizedclient", "no credentials", "missing_authentication_token",
                              "invalidclienttokenid")):
        return DataError(f"the {kind} {where} refused the credentials while {action} ({detail}); check "
                         "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials")
    if "no_such_bucket" in low or "nosuchbucket" in low or "bucket does not exist" in low:
        return DataError(f"the {kind} {where}: the bucket does not exist ({detail}); create it or fix "
                         f"{option}")
    if ("access_denied" in low or "forbidden" in low) and "no response body" in low:
        # a HEAD request's 403 has no body to say why: S3 answers refused keys and a missing
        # permission alike there
        return DataError(f"the {kind} {where} refused access while {action}: the credentials are not accepted "
                         "or may not read it; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
                         "~/.aws/credentials, and the bucket's permissions")
    if "access_denied" in low or "accessdenied" in low or "forbidden" in low or "permission denied" in low:
        need = ("writing needs s3:PutObject and s3:DeleteObject" if action.startswith(("writing", "deleting"))
                else "reading needs s3:ListBucket and s3:GetObject")
        return DataError(f"the {kind} {where} denied permission while {action} ({detail}); these "
                         f"credentials may not do that ({need})")
    return DataError(f"the {kind} {where} failed while {action} ({detail})")


class Objects:
    """One store's objects through ``pyarrow.fs``; every failure is a one-line DataError."""

    def __init__(self, uri: str, kind: str = "data store", option: str = "--store / BT_STORE") -> None:
        self.uri = uri
        self.where = display_uri(uri)
        self.kind, self.option = kind, option
        self._fs: Any = None
        self.base = ""
        self._lock = threading.Lock()

    @property
    def fs(self) -> Any:
        with self._lock:
            if self._fs is None:
                self._fs, self.base = self._open()
        return self._fs

    def _open(self) -> tuple[Any, str]:
        import pyarrow.fs as pafs

        try:
            fs, base = pafs.FileSystem.from_uri(_with_env(self.uri))
        except (OSError, ValueError, TypeError) as exc:
            if isinstance(exc, OSError) and ("AWS" in str(exc) or "curl" in str(exc)):
                raise describe(exc, self.where, "connecting", self.kind, self.option) from None
            raise DataError(f"{self.option.split(' ')[0]} {self.where}: {str(exc).splitlines()[0]}; give s3://bucket/prefix "
                            "(or another URI pyarrow.fs opens, e.g. file:///folder)") from None
        base = base.rstrip("/")
        if type(fs).__name__ == "S3FileSystem":
            fs = _patient_enough(fs)
            bucket = base.split("/", 1)[0]
            try:
                info = fs.get_file_info(bucket)
            except OSError as exc:
                if "access_denied" not in str(exc).lower():
                    raise describe(exc, self.where, "opening the bucket", self.kind, self.option) from None
                # HeadBucket's 403 has no body: refused credentials and a denied permission look the same.
                # A listing of the store's prefix says which, and works for keys that may list only there
                try:
                    fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
                except OSError as listed:
                    raise describe(listed, self.where, "opening the bucket", self.kind, self.option) from None
                return fs, base
            if info.type == pafs.FileType.NotFound:
                raise DataError(f"the {self.kind} {self.where}: the bucket {bucket} does not exist; create it or "
                                f"fix {self.option}")
        return fs, base

    def key(self, rel: str) -> str:
        _ = self.fs
        return f"{self.base}/{rel}" if self.base else rel

    def get(self, rel: str, action: str = "reading") -> bytes:
        try:
            with self.fs.open_input_stream(self.key(rel)) as f:
                data: bytes = f.read()
            return data
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise describe(exc, self.where, f"{action} {rel}", self.kind, self.option) from None

    def put(self, rel: str, data: bytes) -> None:
        try:
            if type(self.fs).__name__ == "LocalFileSystem":
                self.fs.create_dir(self.key(rel).rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(self.key(rel)) as f:
                f.write(data)
        except OSError as exc:
            raise describe(exc, self.where, f"writing {rel}", self.kind, self.option) from None

    def size(self, rel: str) -> int | None:
        """The object's size, or None when there is none."""
        import pyarrow.fs as pafs

        try:
            info = self.fs.get_file_info(self.key(rel))
        except OSError as exc:
            raise describe(exc, self.where, f"looking up {rel}", self.kind, self.option) from None
        return None if info.type == pafs.FileType.NotFound else int(info.size or 0)

    def names(self, rel_dir: str) -> list[str]:
        """The names of the objects directly in ``rel_dir`` (empty when there are none)."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.key(rel_dir), allow_not_found=True))
        except OSError as exc:
            raise describe(exc, self.where, f"listing {rel_dir}", self.kind, self.option) from None
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    def sizes(self, rel_dir: str) -> dict[str, int]:
        """{name: size} of the objects directly in ``rel_dir`` (empty when there are none)."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.key(rel_dir), allow_not_found=True))
        except OSError as exc:
            raise describe(exc, self.where, f"listing {rel_dir}", self.kind, self.option) from None
        return {i.base_name: int(i.size or 0) for i in infos if i.type == pafs.FileType.File}

    def get_ranges(self, rel: str, size: int, spans: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, length) of the object ``rel`` of ``size`` bytes (ranged
        reads: one request each, after the one that opens it)."""
        try:
            with self.fs.open_input_file(self.key(rel)) as f:
                return [f.read_at(length, offset) for offset, length in spans]
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise describe(exc, self.where, f"reading {rel}", self.kind, self.option) from None

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.key(rel))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise describe(exc, self.where, f"deleting {rel}", self.kind, self.option) from None

    # ---- the manifest's versions -----------------------------------------------------------
    def versions(self) -> list[tuple[int, str]]:
        """(version, object name) of every manifest version, oldest first."""
        out = []
        for name in self.names(MANIFESTS):
            m = _VERSION.match(name)
            if m:
                out.append((int(m.group(1)), name))
        return sorted(out)

    def current(self) -> tuple[int, str, bytes | None]:
        """(version, object name, document) of the current manifest; (0, "", None) when empty."""
        for _ in range(3):
            vs = self.versions()
            if not vs:
                return 0, "", None
            top = vs[-1][0]
            name = min(n for v, n in vs if v == top)
            try:
                return top, name, self.get(f"{MANIFESTS}/{name}", "reading the manifest")
            except FileNotFoundError:
                continue  # a losing proposal deleted meanwhile, or pruned: list again
        raise DataError(f"the data store {self.where}: its manifest keeps changing; run the command again")

    def propose(self, version: int, doc: bytes) -> bool:
        """Write manifest ``version``; whether it won (a lost proposal is deleted again). A version
        that is there already is lost at once: the proposal was merged on an older one."""
        if any(v >= version for v, _ in self.versions()):
            return False
        name = f"{version:012d}.{secrets.token_hex(8)}.json"
        self.put(f"{MANIFESTS}/{name}", doc)
        time.sleep(SETTLE)
        rivals = [n for v, n in self.versions() if v == version]
        if rivals and min(rivals) == name:
            return True
        try:
            self.delete(f"{MANIFESTS}/{name}")
        except DataError:
            pass
        return False

    def prune(self, version: int) -> None:
        """Delete manifest versions older than the last ``KEEP_VERSIONS`` (best effort)."""
        for v, name in self.versions():
            if v <= version - KEEP_VERSIONS:
                try:
                    self.delete(f"{MANIFESTS}/{name}")
                except DataError:
                    return


def to_local(manifest: dict[str, list[Partition]]) -> dict[str, list[Partition]]:
    """Partitions as a run reads them (``path``: the copy in the bars cache)."""
    return {s: [replace(p, path=local_path(p.sha256)) for p in ps] for s, ps in manifest.items()}


def to_stored(manifest: dict[str, list[Partition]]) -> dict[str, list[Partition]]:
    """Partitions as the store's manifest names them (``path``: the object under the URI)."""
    return {s: [replace(p, path=object_key(p)) for p in ps] for s, ps in manifest.items()}


def fetch(objects: Objects, root: Path, parts: Iterable[Partition]) -> int:
    """Bring every partition of ``parts`` that the bars cache under ``root`` lacks into it
    (``cache/bars/<sha>.parquet`` and its uncompressed copy), each verified by its content hash,
    and pin them all there for this process (``bars_cache.pin``: the cache's bound never evicts
    them while it runs); the number fetched. A DataError names a partition whose object does not
    hash to its name."""
    from backtest.data import bars_cache

    cache = bars_cache.folder(root)
    parts = list(parts)
    cache.mkdir(parents=True, exist_ok=True)
    bars_cache.pin(cache, [p.sha256 for p in parts])  # kept while this process reads them
    todo = {p.sha256: p for p in parts if not (cache / f"{p.sha256}.parquet").exists()}
    if not todo:
        return 0
    objects.fs  # noqa: B018 - open once (and fail once) before the threads start
    if len(todo) == 1:
        for p in todo.values():
            fetch_one(objects, cache, p)
        return 1
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(8, len(todo))) as pool:
        list(pool.map(lambda p: fetch_one(objects, cache, p), todo.values()))
    return len(todo)


def fetch_one(objects: Objects, cache: Path, p: Partition) -> None:
    """Fetch partition ``p`` into the bars cache ``cache``, with its uncompressed copy."""
    from backtest.data import bars_cache

    cols = fetch_object(objects, cache / f"{p.sha256}.parquet", object_key(p), p.sha256)
    limit = bars_cache.limit_bytes()
    if limit:
        bars_cache.keep(cache, p.sha256, cols.canonical(), 0, len(cols), limit)


def fetch_into(objects: Objects, dest: Path, wanted: list[tuple[str, str]]) -> int:
    """Fetch the objects ``wanted`` ((key, content sha256)) that ``dest`` lacks as
    ``dest/<sha256>.parquet``, each verified; how many were fetched."""
    todo = [(k, h) for k, h in dict(wanted).items() if not (dest / f"{h}.parquet").exists()]
    if not todo:
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    objects.fs  # noqa: B018 - open once (and fail once) before the threads start
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(8, len(todo))) as pool:
        list(pool.map(lambda kh: fetch_object(objects, dest / f"{kh[1]}.parquet", kh[0], kh[1]), todo))
    return len(todo)


_KEY = re.compile(r"bars/symbol=([^/]+)/year=(\d+)/")


def _what(key: str) -> tuple[str, str]:
    m = _KEY.search(key)
    return (m.group(1), m.group(2)) if m else ("", key)


def fetch_object(objects: Objects, target: Path, key: str, sha256: str) -> Any:
    """Get object ``key``, check that its bars hash to ``sha256``, write it whole to ``target``;
    its columns. One-line DataErrors for a missing, unreadable or damaged object."""
    from backtest.data.partition import content_hash
    from backtest.store.fsutil import atomic_write

    symbol, year = _what(key)
    try:
        data = objects.get(key, "fetching")
    except FileNotFoundError:
        raise DataError(f"the {symbol} bars of {year} are missing from the data store {objects.where} "
                        f"({key}); run bt data verify, then import {symbol} again") from None
    cols = _decode(data, key, objects.where, symbol, year)
    if content_hash(cols) != sha256:
        raise DataError(f"the {symbol} bars of {year} in the data store {objects.where} ({key}) do not match "
                        f"their content hash {sha256[:12]}: the object was damaged or rewritten; run bt data "
                        f"verify, then import {symbol} again")
    atomic_write(target, data)
    return cols


def _decode(data: bytes, key: str, where: str, symbol: str, year: str) -> Any:
    import pyarrow as pa

    from backtest.data.partition import read_columns

    try:
        from pyarrow._parquet import ParquetReader

        reader = ParquetReader()
        reader.open(pa.BufferReader(data))

        class _File:
            metadata = reader.metadata

            @staticmethod
            def read(columns: list[str], use_threads: bool = False) -> Any:
                return reader.read_all(column_indices=[reader.column_name_idx(c) for c in columns],
                                       use_threads=use_threads)

        return read_columns(_File())
    except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
        raise DataError(f"the {symbol} bars of {year} in the data store {where} ({key}) are unreadable "
                        f"({str(exc).splitlines()[0][:120]}): the object was damaged; run bt data verify, then "
                        f"import {symbol} again") from None


def columns_of(data: bytes, key: str, where: str, p: Partition) -> Any:
    """The bars of a fetched object (for verify)."""
    return _decode(data, key, where, p.symbol, str(p.year))


def _store_base() -> type:
    from backtest.data.store import Store

    return Store


class ObjectStore(_store_base()):  # type: ignore[misc]
    """``Store`` on an object store (see the module docstring); ``root`` is the local data root,
    which holds the bars cache the partitions are fetched into."""

    remote = True
    #: seconds the manifest read from the store is used before it is read again
    MANIFEST_TTL = 2.0

    def __init__(self, root: Path | None = None, uri: str | None = None) -> None:
        from backtest import paths
        from backtest.data.store import CONFIGURED

        self.root = Path(root) if root is not None else paths.root()
        target = paths.store_uri() if uri in (None, CONFIGURED) else uri
        if not target:
            raise DataError("no object store given (--store / BT_STORE)")
        self.uri = target
        self.objects = Objects(target)
        self.where = self.objects.where
        self._files = None
        self._cache = None
        self._remote: tuple[float, int, dict[str, list[Partition]]] | None = None
        self._stage: Path | None = None

    # ---- reading -------------------------------------------------------------------------------
    def _current(self) -> tuple[int, dict[str, list[Partition]]]:
        from backtest.data.manifest import parse

        version, name, doc = self.objects.current()
        manifest = parse(doc, Path(f"{self.where}/{MANIFESTS}/{name}")) if doc is not None else {}
        self._remote = (time.monotonic(), version, to_local(manifest))
        return version, self._remote[2]

    def _manifest(self) -> dict[str, list[Partition]]:
        if self._remote is None or time.monotonic() - self._remote[0] > self.MANIFEST_TTL:
            self._current()
        assert self._remote is not None
        return self._remote[2]

    def path(self, p: Partition) -> Path:
        fetch(self.objects, self.root, [p])
        return self.root / p.path

    def fetch(self, files: Iterable[tuple[str, str] | list[str]]) -> int:
        by_sha = {p.sha256: p for ps in self._manifest().values() for p in ps}
        wanted = [by_sha[sha] for _, sha in files if sha in by_sha]  # others: the run reports them changed
        return fetch(self.objects, self.root, wanted)

    def changed(self, symbols: Iterable[str], files: Iterable[tuple[str, str]]) -> list[str]:
        """As ``Store.changed``; the files found unchanged are fetched (to be read again)."""
        files = list(files)
        out: list[str] = super().changed(symbols, files)
        if not out:
            self.fetch(files)
        return out

    def verify(self, symbol: str | None = None) -> list[str]:
        """Fetch every partition object again and recompute its content hash (and check the
        local copies)."""
        from backtest.data import bars_cache
        from backtest.data.partition import content_hash

        problems = []
        copies = bars_cache.folder(self.root)
        for sym in [symbol] if symbol else self.symbols():
            for p in self.partitions(sym):
                key = object_key(p)
                local = copies / f"{p.sha256}.parquet"
                if bars_cache.damaged(copies, p.sha256):
                    problems.append(f"{key}: its uncompressed copy in {copies} was damaged; deleted (the next run "
                                    "that reads it makes it again)")
                try:
                    data = self.objects.get(key, "verifying")
                except FileNotFoundError:
                    problems.append(f"{key}: missing from the data store {self.where}")
                    continue
                try:
                    got = content_hash(columns_of(data, key, self.where, p))
                except DataError as exc:
                    problems.append(str(exc))
                    continue
                if got != p.sha256:
                    problems.append(f"{key}: content hash {got[:12]} differs from the manifest's {p.sha256[:12]}")
                elif local.exists() and local.read_bytes() != data:
                    local.unlink(missing_ok=True)  # a copy that differs from the store's: fetched again when read
                    problems.append(f"{key}: its fetched copy {local} differed from the store's; deleted")
        return problems

    # ---- writing -------------------------------------------------------------------------------
    def _stage_dir(self) -> Path:
        assert self._stage is not None
        return self._stage

    def remove(self, symbol: str) -> None:
        from backtest.data import bars_cache

        sym = self.partitions(symbol)[0].symbol
        for _ in range(TRIES):
            version, manifest = self._current()
            if sym not in manifest:
                return  # removed meanwhile by someone else
            rest = {s: ps for s, ps in manifest.items() if s != sym}
            if self._propose(version, rest):
                break
        else:
            raise self._conflict("removing " + sym)
        for p in manifest[sym]:
            try:
                self.objects.delete(object_key(p))
            except DataError:
                pass  # left behind: unreferenced, harmless
        bars_cache.drop(self.root, [p.sha256 for p in manifest[sym]])
        for p in manifest[sym]:
            (bars_cache.folder(self.root) / f"{p.sha256}.parquet").unlink(missing_ok=True)
        self._remote = None

    def _propose(self, version: int, manifest: dict[str, list[Partition]]) -> bool:
        from backtest.data.manifest import dump

        won = self.objects.propose(version + 1, dump(to_stored(manifest)))
        self._remote = None
        if won:
            self.objects.prune(version + 1)
        return won

    def _conflict(self, what: str) -> DataError:
        return DataError(f"the manifest of the data store {self.where} was changed by someone else during "
                         f"{what}, {TRIES} times in a row; nothing of it was committed: run the command again")

    def _commit(self, frames: Any, opts: Any) -> list[Any]:
        import tempfile

        from backtest.data import bars_cache

        cache = bars_cache.folder(self.root)
        cache.mkdir(parents=True, exist_ok=True)
        for _ in range(TRIES):
            version, manifest = self._current()
            new_manifest = dict(manifest)
            reports = []
            with tempfile.TemporaryDirectory(prefix=".import-", dir=cache) as stage:
                self._stage = Path(stage)
                try:
                    changed = False
                    for frame in frames:
                        report, parts, writes = self._merge(frame, new_manifest.get(frame.symbol, []), opts)
                        reports.append(report)
                        if writes:
                            new_manifest[frame.symbol] = parts
                            changed = True
                    if not changed:
                        return reports
                    for report in reports:  # the partitions first, by content
                        for p in report.written:
                            staged = self._stage / f"{p.symbol}-{p.year}.parquet"
                            if self.objects.size(object_key(p)) != p.size:
                                self.objects.put(object_key(p), staged.read_bytes())
                            os.replace(staged, cache / f"{p.sha256}.parquet")
                finally:
                    self._stage = None
            if self._propose(version, new_manifest):  # then the manifest: the commit
                break
        else:
            raise self._conflict("this import")
        kept = {p.sha256 for ps in new_manifest.values() for p in ps}
        for ps in manifest.values():  # objects the new version replaced
            for p in ps:
                if p.sha256 not in kept:
                    try:
                        self.objects.delete(object_key(p))
                    except DataError:
                        pass
        return reports
