"""A real S3 API for the tests: moto's standalone server in a subprocess.

``S3Server(host)`` starts ``python -m moto.server`` on ``host`` and a free port. ``bucket()``
makes a fresh bucket; ``env()`` is the environment a client needs (keys, endpoint, region).

moto's server checks no credentials unless its IAM authentication is turned on, and with it on
(moto 5.2.1) it refuses even correctly signed ListObjectsV2 and PutObject requests of boto3 and
pyarrow alike; so the server runs without it and wrong keys are not refused here.
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


class S3Server:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
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
