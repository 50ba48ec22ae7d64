"""A real S3 API for the tests: moto's standalone server in a subprocess.

``S3Server(host)`` starts ``python -m moto.server`` on ``host`` and a free port. ``bucket()``
makes a fresh bucket; ``env(who)`` is the environment a client needs (keys, endpoint, region).

Without ``auth`` the server checks no credentials (any keys do). ``S3Server(host, auth=True)``
checks them as S3 does: before turning moto's IAM authentication on (``/moto-api/reset-auth``,
so the setup's own requests are not counted against ``INITIAL_NO_AUTH_ACTION_COUNT``) it creates
IAM users through the server's IAM API, each with an access key and an inline policy. From then
on every request's signature V4 is verified against the user's secret and its action against the
user's policy. The key pairs (``keys``):

- ``writer``: full S3 access;
- ``reader``: ``s3:GetObject`` and ``s3:ListBucket`` only (reads and lists, cannot write or delete;
  moto checks HeadBucket against an action ``s3:HeadBucket`` where S3 checks ``s3:ListBucket``, so
  its HEAD of the bucket is denied: bt then lists the store's prefix instead, as for a key that may
  list only there);
- ``nobody``: a user without a policy (every request is denied);
- ``wrong``: a made-up pair the server does not know (``InvalidAccessKeyId``).

moto 5.2.4 is the first that verifies signatures of the requests boto3 and pyarrow send: before
it, the server computed the signature over the URL as werkzeug rebuilt it, percent-decoded
(``prefix=team%2Fbars%2F`` became ``prefix=team/bars/``, ``symbol%3DAAPL`` in a key
``symbol=AAPL``), and refused every listing with a prefix and every write of a partition's key.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass

REGION = "us-east-1"

#: the inline IAM policy of each user of an ``auth`` server (``nobody`` has none)
POLICIES = {
    "writer": ["s3:*"],
    "reader": ["s3:GetObject", "s3:ListBucket"],
    "nobody": None,
}
#: a key pair no server knows
WRONG = ("AKIAWRONGKEY0000TEST", "wrong-secret-not-known-to-the-server/0000")
#: the first moto whose server verifies the signatures of boto3's and pyarrow's requests
AUTH_MOTO = "5.2.4"


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


@dataclass(frozen=True)
class Keys:
    access_key: str
    secret_key: str


class S3Server:
    def __init__(self, host: str = "127.0.0.1", auth: bool = False) -> None:
        self.host = host
        self.auth = auth
        if auth:
            from importlib.metadata import version

            if _version(version("moto")) < _version(AUTH_MOTO):
                raise RuntimeError(f"S3Server(auth=True) needs moto >= {AUTH_MOTO} (this is moto {version('moto')}, "
                                   "which refuses correctly signed requests): pip install -e '.[test]'")
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
        if auth:
            try:
                self.keys = self._users()
                self._moto_api("reset-auth", b"0")  # authentication on from the next request
            except BaseException:
                self.stop()
                raise
        else:
            self.keys = {"writer": Keys("testing", "testing")}

    def _users(self) -> dict[str, Keys]:
        """Create an IAM user (an access key, an inline policy) for each of ``POLICIES``."""
        import json

        iam = self._client("iam")
        keys = {}
        for who, actions in POLICIES.items():
            iam.create_user(UserName=who)
            if actions:
                doc = {"Version": "2012-10-17",
                       "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
                iam.put_user_policy(UserName=who, PolicyName=f"{who}-s3", PolicyDocument=json.dumps(doc))
            k = iam.create_access_key(UserName=who)["AccessKey"]
            keys[who] = Keys(k["AccessKeyId"], k["SecretAccessKey"])
        keys["wrong"] = Keys(*WRONG)
        return keys

    def _moto_api(self, what: str, data: bytes) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/{what}", data=data, method="POST",
                                     headers={"Content-Type": "text/plain"})  # read as bytes, not a form
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()

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
