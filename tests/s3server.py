"""A real S3 API for the tests: moto's standalone server in a subprocess.

``S3Server(host)`` starts ``python -m moto.server`` on ``host`` and a free port. ``bucket()``
makes a fresh bucket; ``env()`` is the environment a client needs (keys, endpoint, region).

moto's server checks no credentials unless its IAM authentication is turned on
(``S3Server(auth=True)``: an IAM user ``writer`` with every S3 permission, and ``wrong`` keys it
never issued, which it refuses with InvalidAccessKeyId). With authentication on, moto 5.2.1 also
refuses correctly signed requests whose query holds a ``/`` (``SignatureDoesNotMatch``: every
listing of a prefix, by boto3 and pyarrow alike), so a signed-in user cannot list anything and
the other tests use a server without it; and a user whose policy denies an action cannot be
reached through bt's commands, which list first. ``ReadOnlyS3`` stands in for that one case: an
endpoint that answers as S3 answers a user who may read but not write (403 AccessDenied).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

REGION = "us-east-1"

@dataclass(frozen=True)
class Keys:
    access_key: str
    secret_key: str


#: the IAM requests ``S3Server(auth=True)`` makes before moto starts checking every request
_BOOTSTRAP = 4


class S3Server:
    def __init__(self, host: str = "127.0.0.1", auth: bool = False) -> None:
        self.host = host
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_BOOTSTRAP)
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        port = None
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"Running on https?://[^:]+:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            self.stop()
            raise RuntimeError("moto's server did not start")
        self.port = port
        self.endpoint = f"http://{host}:{port}"
        import threading

        threading.Thread(target=self._drain, daemon=True).start()
        self.keys = {"writer": Keys("testing", "testing")}
        if auth:
            self._users()

    def _users(self) -> None:
        """With authentication on: a ``writer`` with every S3 permission (an IAM user of its own),
        and ``wrong`` keys the server never issued."""
        import json

        iam = self._client("iam")
        iam.create_user(UserName="writer")
        made = iam.create_access_key(UserName="writer")["AccessKey"]
        policy = iam.create_policy(PolicyName="s3-all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        iam.attach_user_policy(UserName="writer", PolicyArn=policy["Policy"]["Arn"])  # the last free request
        self.keys = {"writer": Keys(made["AccessKeyId"], made["SecretAccessKey"]),
                     "wrong": Keys("AKIAWRONGWRONGWRONG0", "not-a-secret-this-server-issued")}

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def _client(self, service: str, keys: Keys | None = None):  # noqa: ANN202 - boto3's client
        import boto3

        k = keys or Keys("bootstrap", "bootstrap")
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=k.access_key, aws_secret_access_key=k.secret_key)

    def bucket(self, name: str | None = None) -> str:
        name = name or f"bt-{uuid.uuid4().hex[:12]}"
        self._client("s3", self.keys["writer"]).create_bucket(Bucket=name)
        return name

    def client(self, who: str = "writer"):  # noqa: ANN201 - boto3's client
        return self._client("s3", self.keys[who])

    def env(self, who: str = "writer") -> dict[str, str]:
        k = self.keys[who]
        return {"AWS_ACCESS_KEY_ID": k.access_key, "AWS_SECRET_ACCESS_KEY": k.secret_key,
                "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "BT_S3_ENDPOINT": self.endpoint,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class ReadOnlyS3:
    """An S3 endpoint on ``host`` that answers as S3 answers a user who may read an empty bucket
    but not write (moto cannot be brought to: see above): every bucket exists and lists nothing,
    every object is missing, and every write is 403 AccessDenied."""

    DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
              b"<Message>Access Denied</Message><RequestId>bt-test</RequestId></Error>")
    MISSING = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
               b"<Message>The specified key does not exist.</Message><RequestId>bt-test</RequestId></Error>")

    def __init__(self, host: str = "127.0.0.1") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        denied, missing = self.DENIED, self.MISSING
        self.writes = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body: bytes) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
                bucket_only = "/" not in urlsplit(self.path).path.strip("/")
                self._answer(200 if bucket_only else 404, b"")

            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                if "/" in url.path.strip("/"):
                    self._answer(404, missing)
                    return
                prefix = parse_qs(url.query).get("prefix", [""])[0]
                self._answer(200, ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult '
                                   'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>'
                                   f"{url.path.strip('/')}</Name><Prefix>{prefix}</Prefix><KeyCount>0</KeyCount>"
                                   "<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>").encode())

            def _deny(self) -> None:
                outer.writes += 1
                self._answer(403, denied)

            do_PUT = do_POST = do_DELETE = _deny  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.endpoint = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
