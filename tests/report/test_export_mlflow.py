"""`bt export mlflow`: against a real MLflow tracking server started here on 127.0.0.1 (SQLite
backend store in a temporary folder) and against a local SQLite tracking URI, read back with
MLflow's own client; the refusals (too many tasks, unreachable, permission, deleted experiment)
and the message without the extra, in an interpreter where mlflow cannot be imported."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import mlflow_server
import pytest
from helpers import bt, run_json

pytest.importorskip("mlflow", reason="the MLflow client is in the test extra: pip install -e '.[test]'")

from mlflow.entities import ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# MLflow's database layer warns about its own use of SQLAlchemy when the tests read a local store back
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def errors(err: str) -> list[str]:
    """What the command said on stderr, less its "exporting ..." line."""
    return [line for line in err.strip().splitlines() if not line.startswith("exporting ")]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    python, why = mlflow_server.server_python()
    if python is None:
        pytest.skip(why)
    proc, uri = mlflow_server.start(python, tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield uri
    finally:
        mlflow_server.stop(proc)


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # a local tracking URI keeps its artifacts in ./mlruns


def export(root: Path, run_id: str, *args: object) -> tuple[int, str, str]:
    return bt("--data", root, "export", "mlflow", run_id, *args)


def children(client: MlflowClient, parent: Any) -> list[Any]:
    return client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                              run_view_type=ViewType.ALL, max_results=5000)


def parents(client: MlflowClient, experiment: str) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs([exp.experiment_id], "tags.`bt.kind` = 'run'", run_view_type=ViewType.ALL)


def catalog_rows(root: Path, run_id: str) -> dict[str, dict[str, Any]]:
    from backtest.catalog import Catalog

    return {r["key"]: r for r in Catalog(root / "catalog.duckdb").task_rows(run_id)}


def same_metric(logged: float, stored: float) -> bool:
    """MLflow keeps NaN; it stores ±inf as ±(the largest double)."""
    if math.isnan(stored):
        return math.isnan(logged)
    if math.isinf(stored):
        return logged == math.copysign(sys.float_info.max, stored)
    return logged == stored


def check_export(client: MlflowClient, root: Path, run_id: str, experiment: str, tasks: int) -> tuple[Any, list[Any]]:
    """One parent holding ``tasks`` children whose params, metrics and tags are the catalog's."""
    from backtest.catalog import METRICS

    (parent,) = parents(client, experiment)
    tags = parent.data.tags
    assert tags["bt.run_id"] == run_id and tags["bt.kind"] == "run"
    assert tags["bt.code_hash"] and tags["bt.strategy"] and tags["bt.executor"] and tags["bt.version.bt"]
    assert json.loads("[" + ",".join(f'"{h}"' for h in tags["bt.data_hashes"].split(",")) + "]")
    assert parent.data.params["cash"]
    assert parent.info.status == {"done": "FINISHED", "failed": "FAILED"}[tags["bt.status"]]  # the run's (1 task failed)
    kids = children(client, parent)
    assert len(kids) == tasks
    rows = catalog_rows(root, run_id)
    for kid in kids:
        row = rows[kid.data.tags["bt.task_key"]]
        assert kid.data.tags["bt.run_id"] == run_id
        assert kid.data.params == {"symbol": row["symbol"], **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                                              for k, v in json.loads(row["params"]).items()}}
        if row["status"] == "done":
            assert kid.info.status == "FINISHED"
            stored = {m: row[m] for m in METRICS if row[m] is not None}
            assert set(stored) <= set(kid.data.metrics)
            assert all(same_metric(kid.data.metrics[m], v) for m, v in stored.items()), kid.data.metrics
        else:
            assert kid.info.status == "FAILED" and kid.data.tags["bt.error"] and not kid.data.metrics
    return parent, kids


def test_export_to_a_tracking_server_then_again_updates_the_same_runs(server: str, reported: tuple[Path, str]) -> None:
    root, run_id = reported
    code, out, err = export(root, run_id, "--tracking-uri", server, "--experiment", "server-all")
    assert code == 0, err + out
    assert "36 task run(s) made, 0 already exported" in out and f"{server}/#/experiments/" in out
    assert "View run" not in out  # MLflow's own links are not printed for every run
    client = MlflowClient(server)
    parent, kids = check_export(client, root, run_id, "server-all", 36)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"report.html", "strategy", "job.json"}
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "strategy")] == ["strategy/crossing.py", "strategy/packages.txt"]
    job = json.loads(Path(client.download_artifacts(parent.info.run_id, "job.json")).read_text())
    assert job["symbols"] == ["AAA", "BBB", "CCC"] and len(job["params"]) == 12 and "cash" in job["settings"]

    code, out, err = export(root, run_id, "--tracking-uri", server, "--experiment", "server-all")
    assert code == 0, err + out
    assert "0 task run(s) made, 36 already exported" in out
    again, kids_again = check_export(client, root, run_id, "server-all", 36)
    assert again.info.run_id == parent.info.run_id
    assert {k.info.run_id for k in kids_again} == {k.info.run_id for k in kids}
    done = next(k for k in kids_again if k.data.tags["bt.status"] == "done")
    assert len(client.get_metric_history(done.info.run_id, "sharpe")) == 1  # the same point, not a second one


def test_a_task_run_is_three_requests_sent_concurrently(server: str, reported: tuple[Path, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every HTTP request the export makes, counted: a new task run is created with its tags, gets
    one batch (params and metrics, not the tags again) and its status; tasks are sent several at
    once; a re-export sends nothing per task."""
    import collections
    import time

    import requests

    from backtest.report import mlflow as mlf

    root, run_id = reported
    sent: collections.Counter[str] = collections.Counter()
    batches: list[dict[str, Any]] = []
    lock = threading.Lock()
    flying, most, drops = 0, 0, 0
    real = requests.Session.send

    def send(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        nonlocal flying, most, drops
        path = (request.path_url or "").split("?")[0].split("/mlflow/", 1)[-1]
        with lock:
            sent[f"{request.method} {path}"] += 1
            flying += 1
            most = max(most, flying)
            if path == "runs/log-batch":
                batches.append(json.loads(request.body or "{}"))
        try:
            if path == "runs/create":
                time.sleep(0.02)  # as if the server were further away: tasks overlap
            return real(self, request, **kwargs)
        except requests.exceptions.ConnectionError:  # a broken connection: the export sends the task again
            with lock:
                drops += 1
            raise
        finally:
            with lock:
                flying -= 1

    sel = mlf.select(run_id, root=root)
    client, uri = mlf.mlflow_client(server)
    monkeypatch.setattr(requests.Session, "send", send)
    done = mlf.export(sel, client, uri, "server-requests", root=root)
    assert (done.created, done.kept) == (36, 0)
    per_task = {k: n for k, n in sent.items() if n >= 36}  # + the parent's; each exact unless a connection broke
    assert set(per_task) == {"POST runs/create", "POST runs/log-batch", "POST runs/update"}, sent
    assert all(37 <= n <= 37 + drops for n in per_task.values()), (sent, drops)
    assert sum(sent.values()) - 3 * 37 <= 12 + 2 * drops, sent  # the experiment, the searches, the parent's artifacts
    tagged = [b for b in batches if b.get("tags")]
    assert len(tagged) == 1 and any(t["key"] == "bt.kind" and t["value"] == "run" for t in tagged[0]["tags"])
    assert most > 1  # several tasks in flight

    sent.clear()
    done = mlf.export(sel, client, uri, "server-requests", root=root)
    assert (done.created, done.completed, done.kept) == (0, 0, 36)
    assert sum(sent.values()) <= 15, sent
    monkeypatch.undo()
    check_export(MlflowClient(server), root, run_id, "server-requests", 36)


def test_a_dropped_connection_is_sent_again_without_a_second_run(server: str, reported: tuple[Path, str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that breaks under a run's creation (which MLflow does not send again: it may
    have been done) is sent again by the export, which first looks for the run the lost request
    may have made: whether the server made it (the answer lost) or never saw the request, the
    export ends with one run a task. (The server is real; the break is made in the client, as a
    real one cannot be timed: a kept-alive connection the server closes just as it is used.)"""
    import requests

    from backtest.report import mlflow as mlf

    root, run_id = reported
    creations = 0
    lock = threading.Lock()
    real = requests.Session.send

    def send(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        nonlocal creations
        if (request.path_url or "").split("?")[0].endswith("/runs/create"):
            with lock:
                creations += 1
                n = creations
            if n in (3, 12):  # the server never saw it
                raise requests.exceptions.ConnectionError("('Connection aborted.', ConnectionResetError(104))")
            if n in (5, 6, 20):  # the server made the run; its answer was lost
                real(self, request, **kwargs)
                raise requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())")
        return real(self, request, **kwargs)

    sel = mlf.select(run_id, root=root)
    client, uri = mlf.mlflow_client(server)
    monkeypatch.setattr(requests.Session, "send", send)
    done = mlf.export(sel, client, uri, "server-dropped", root=root)
    monkeypatch.undo()
    assert (done.created, done.completed, done.kept) == (36, 0, 0)
    assert creations == 37 + 2  # + the parent's; the two the server never saw sent again, the three it made not
    check_export(MlflowClient(server), root, run_id, "server-dropped", 36)


def test_a_connection_that_keeps_breaking_stops_the_export_in_one_line(server: str, reported: tuple[Path, str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    from backtest.errors import BtError
    from backtest.report import mlflow as mlf

    root, run_id = reported
    real = requests.Session.send
    batches = 0

    def send(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        nonlocal batches
        if (request.path_url or "").split("?")[0].endswith("/runs/log-batch"):
            batches += 1
            if batches == 1:  # the parent's
                return real(self, request, **kwargs)
            raise requests.exceptions.ConnectionError("('Connection aborted.', ConnectionResetError(104))")
        return real(self, request, **kwargs)

    sel = mlf.select(run_id, root=root)
    client, uri = mlf.mlflow_client(server)
    monkeypatch.setattr(requests.Session, "send", send)
    with pytest.raises(BtError, match="Connection aborted") as caught:
        mlf.export(sel, client, uri, "server-broken", root=root)
    monkeypatch.undo()
    assert "\n" not in str(caught.value)
    done = mlf.export(sel, client, uri, "server-broken", root=root)  # the next export completes it
    assert done.created + done.completed == 36 and done.created < 36
    check_export(MlflowClient(server), root, run_id, "server-broken", 36)


def test_top_exports_the_best_tasks_by_sort(server: str, reported: tuple[Path, str]) -> None:
    from backtest.report import ranked, task_records

    root, run_id = reported
    code, out, err = export(root, run_id, "--tracking-uri", server, "--experiment", "server-top",
                            "--top", "4", "--sort", "total_return")
    assert code == 0, err + out
    client = MlflowClient(server)
    parent, kids = check_export(client, root, run_id, "server-top", 4)
    _, records = task_records(run_id, root)
    assert {k.data.tags["bt.task_key"] for k in kids} == {r["key"] for r in ranked(records, "total_return")[:4]}
    assert parent.data.tags["bt.tasks"] == "36" and parent.data.tags["bt.exported_tasks"] == "4"


def test_export_to_a_local_sqlite_uri_with_trades(tmp_path: Path, reported: tuple[Path, str]) -> None:
    root, run_id = reported
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for made, kept in ((36, 0), (0, 36)):
        code, out, err = export(root, run_id, "--tracking-uri", uri, "--trades")
        assert code == 0, err + out
        assert f"{made} task run(s) made, {kept} already exported" in out
        client = MlflowClient(uri)
        strategy = json.loads(json.dumps(client.search_experiments()[0].name))
        parent, kids = check_export(client, root, run_id, strategy, 36)
    assert strategy == "Crossing"  # the default experiment: the strategy's name
    kid = next(k for k in kids if k.data.tags["bt.status"] == "done" and k.data.metrics["trades"] > 0)
    text = Path(client.download_artifacts(kid.info.run_id, "trades.csv")).read_text()
    assert text.splitlines()[0].replace('"', "").startswith("entry_time,exit_time,side")
    assert len(text.splitlines()) == 1 + kid.data.metrics["trades"]
    trades = list(csv.DictReader(io.StringIO(text)))
    assert all(t["mae"] and t["mfe"] for t in trades), trades[0]  # computed again, as bt report --trades does
    assert all(float(t["mae"]) <= 0 <= float(t["mfe"]) for t in trades if t["side"] == "long")
    chosen = ",".join(f"{k}={v}" for k, v in kid.data.params.items() if k != "symbol")
    code, out, err = bt("--data", root, "report", run_id, "--symbol", kid.data.params["symbol"], "--params", chosen,
                        "--trades", "--format", "csv")
    assert code == 0, err
    assert list(csv.DictReader(io.StringIO(out))) == trades
    assert (tmp_path / "mlruns").is_dir()  # MLflow's default artifact folder beside a local database


def test_an_export_cut_short_is_completed_by_the_next_one(tmp_path: Path, reported: tuple[Path, str]) -> None:
    from backtest.errors import BtError
    from backtest.report import mlflow as mlf

    root, run_id = reported
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, _ = mlf.mlflow_client(uri)
    ended = 0
    real = client.set_terminated

    def failing(run: str, *args: Any, **kwargs: Any) -> None:
        nonlocal ended
        ended += 1
        if ended == 10:
            from mlflow.exceptions import MlflowException

            raise MlflowException("the database went away")
        real(run, *args, **kwargs)

    client.set_terminated = failing  # type: ignore[method-assign]
    sel = mlf.select(run_id, root=root)
    with pytest.raises(BtError, match="the database went away"):
        mlf.export(sel, client, uri, "cut", root=root)
    (parent,) = parents(MlflowClient(uri), "cut")
    assert parent.info.status == "RUNNING"  # marked unfinished
    done = mlf.export(sel, MlflowClient(uri), uri, "cut", root=root)
    assert (done.created, done.completed, done.kept) == (36 - 10, 1, 9)  # the 10th was not ended
    _, kids = check_export(MlflowClient(uri), root, run_id, "cut", 36)
    for kid in kids:  # the run sent twice holds each metric point once
        if kid.data.tags["bt.status"] == "done":
            assert len(MlflowClient(uri).get_metric_history(kid.info.run_id, "sharpe")) == 1


def test_more_than_1000_tasks_need_all_or_top(tmp_path: Path, root: Path, sma_path: Path) -> None:
    run = run_json(root, sma_path, "--from", "2019", "--to", "2020", "-p", "fast=2:40:1", "-p", "slow=50:60:1")
    assert run["tasks"] == 3 * 39 * 11
    closed = f"http://127.0.0.1:{mlflow_server.free_port()}"
    code, out, err = bt("--data", root, "export", "mlflow", run["run_id"], "--tracking-uri", closed)
    assert code == 2
    assert err.strip().splitlines() == [f"error: run {run['run_id']} has 1,287 tasks, more than 1,000 MLflow runs: "
                                        "export the best with --top N (by --sort METRIC), or every one with --all"]
    for more in (["--top", "5"], ["--all"]):  # past the refusal, to the (closed) server
        code, out, err = bt("--data", root, "export", "mlflow", run["run_id"], "--tracking-uri", closed, *more)
        assert code == 2 and "cannot reach the MLflow tracking server" in err and len(errors(err)) == 1
    code, out, err = bt("--data", root, "export", "mlflow", run["run_id"], "--top", "5", "--all")
    assert code == 2 and "give one of them" in err


class _Refusing(BaseHTTPRequestHandler):
    """A server in front of MLflow that refuses everyone, as an authenticating proxy does."""

    def _refuse(self) -> None:
        body = json.dumps({"error_code": "PERMISSION_DENIED", "message": "user anonymous may not edit"}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _refuse

    def log_message(self, *args: Any) -> None:
        pass


def test_unreachable_refused_and_deleted_are_one_line_exit_2(server: str, reported: tuple[Path, str]) -> None:
    root, run_id = reported
    closed = f"http://127.0.0.1:{mlflow_server.free_port()}"
    code, out, err = export(root, run_id, "--tracking-uri", closed)
    assert code == 2 and err.strip().splitlines() == [
        f"error: cannot reach the MLflow tracking server at {closed}: Connection refused"]

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        code, out, err = export(root, run_id, "--tracking-uri", f"http://127.0.0.1:{proxy.server_port}")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert code == 2 and errors(err) == [f"error: MLflow at http://127.0.0.1:{proxy.server_port}: permission denied: "
                                         "user anonymous may not edit"], err

    client = MlflowClient(server)
    client.delete_experiment(client.create_experiment("gone"))
    code, out, err = export(root, run_id, "--tracking-uri", server, "--experiment", "gone")
    assert code == 2 and len(errors(err)) == 1, err
    assert 'the MLflow experiment "gone" is deleted' in err
    assert client.search_runs([client.get_experiment_by_name("gone").experiment_id], "",
                              run_view_type=ViewType.ALL) == []  # nothing written

    code, out, err = export(root, run_id, "--tracking-uri", server, "--experiment", " ")
    assert code == 2 and "--experiment needs a name" in err


def test_without_the_extra_the_command_says_how_to_install_it(reported: tuple[Path, str]) -> None:
    """In an interpreter where ``import mlflow`` fails, as it does where the extra is not installed."""
    root, run_id = reported
    code = textwrap.dedent(f"""
        import sys

        class NoMlflow:
            def find_spec(self, name, path=None, target=None):
                if name == "mlflow" or name.startswith("mlflow."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, NoMlflow())
        from backtest.launch import main
        main(["--data", {str(root)!r}, "export", "mlflow", {run_id!r}, "--tracking-uri", "http://127.0.0.1:9"])
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: bt export mlflow needs the MLflow client (mlflow is not installed): pip install 'bt-farm[mlflow]'"]
