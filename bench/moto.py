"""A local S3 server for the tests and the benchmarks: moto's server mode on a free port.

No S3-compatible server ships here as a binary; `python -m moto.server` speaks the S3 API over
HTTP (moto is in the dev extra). It runs with authentication on, as a real store does: its first
three requests (an IAM user, its access key, a policy allowing everything) are the only ones it
takes unsigned, and every later request must be signed with that key, so wrong credentials are
refused as AWS refuses them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from jobs.storage import S3Options, S3Url
from worker.settings import Settings

REGION = "us-east-1"
_ALLOW_ALL = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


@dataclass(frozen=True)
class LocalS3:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    pid: int

    def options(self, **changes: str) -> S3Options:
        fields = {
            "endpoint_url": self.endpoint,
            "region": REGION,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            **changes,
        }
        return S3Options(**fields)

    def env(self) -> dict[str, str]:
        """The service's variables for this server."""
        return {
            "ETL_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": REGION,
        }

    def client(self) -> Any:
        """A boto3 S3 client (moto depends on boto3) for setting up and checking."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited at start-up (status {proc.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return  # a bare connect: an HTTP request would use up one of the unsigned ones
        time.sleep(0.1)
    raise RuntimeError(f"moto server did not listen on port {port} within {timeout_s:.0f} s")


@contextlib.contextmanager
def local_s3() -> Iterator[LocalS3]:
    """A moto server with authentication on, and a user allowed everything; stopped at the end."""
    import boto3

    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            _wait_listening(port, proc)
            endpoint = f"http://127.0.0.1:{port}"
            iam = boto3.client(
                "iam",
                endpoint_url=endpoint,
                region_name=REGION,
                aws_access_key_id="setup",
                aws_secret_access_key="setup",
            )
            iam.create_user(UserName="etl")
            key = iam.create_access_key(UserName="etl")["AccessKey"]
            iam.put_user_policy(UserName="etl", PolicyName="all", PolicyDocument=_ALLOW_ALL)
            yield LocalS3(
                endpoint=endpoint,
                access_key_id=key["AccessKeyId"],
                secret_access_key=key["SecretAccessKey"],
                pid=proc.pid,
            )
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def unavailable() -> str | None:
    """Why S3 cannot be used here (None when it can): obstore (the `s3` extra) or moto missing."""
    for module, extra in (("obstore", "s3"), ("moto", "dev")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'etl-worker[{extra}]')"
    return None


def s3_settings(settings: Settings, s3: LocalS3, bucket: str) -> Settings:
    """`settings` with the import dir `s3://bucket/inbox` and the export dir `s3://bucket/exports`
    on this server."""
    return settings.model_copy(
        update={
            "import_dir": S3Url(bucket, "inbox"),
            "export_dir": S3Url(bucket, "exports"),
            "s3_endpoint_url": s3.endpoint,
            "aws_access_key_id": s3.access_key_id,
            "aws_secret_access_key": SecretStr(s3.secret_access_key),
            "aws_region": REGION,
        }
    )
