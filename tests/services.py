"""Services the shared-store tests need, started by the tests themselves, once per test session.

- ``moto_s3()``: an S3-compatible endpoint (moto's threaded server on a free port of 127.0.0.1), with fake
  credentials in the environment so s3fs and boto3 (and worker subprocesses, which inherit it) reach it;
  ``new_bucket(endpoint)`` makes a fresh bucket per test.
- ``postgres_url()``: ``LYCHEE_TEST_POSTGRES_URL`` when set, else a throwaway PostgreSQL server (initdb into a
  temporary directory, as the ``postgres`` user when running as root) on a free port, stopped at exit. Without
  the server binaries (PATH or /usr/lib/postgresql/*/bin) it calls ``pytest.skip`` saying how to get them.

Tests need no namespace in the database: the catalog keys its rows by the store's objects URL, so a fresh bucket
or prefix per test is enough.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

POSTGRES_ENV = "LYCHEE_TEST_POSTGRES_URL"
_FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
_lock = threading.Lock()
_moto_endpoint: str | None = None
_postgres: tuple[str | None, str | None, str | None] | None = None  # (url, skip reason, failure), once per session


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# S3 (moto) ---------------------------------------------------------------------------------------------


def use_fake_aws_credentials() -> None:
    """Fake credentials for moto, so nothing can reach a real AWS account with the user's own."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    os.environ.update(_FAKE_AWS)


def moto_s3() -> str:
    """The endpoint URL of this session's moto S3 server (started on first use, stopped at exit)."""
    global _moto_endpoint
    with _lock:
        if _moto_endpoint is None:
            try:
                from moto.server import ThreadedMotoServer
            except ImportError as error:
                pytest.skip(f"moto[server] is not installed ({error}): pip install 'moto[server]' s3fs")
            use_fake_aws_credentials()
            port = free_port()
            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            atexit.register(server.stop)
            _moto_endpoint = f"http://127.0.0.1:{port}"
        else:
            use_fake_aws_credentials()  # a test may have changed the environment meanwhile
        return _moto_endpoint


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def new_bucket(endpoint: str) -> str:
    """A fresh, empty bucket on the endpoint, for one test."""
    name = f"lychee-{uuid.uuid4().hex[:20]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


# PostgreSQL ------------------------------------------------------------------------------------------


def _postgres_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl: from PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: [int(p) for p in Path(path).parent.name.split(".")]
    )
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    return None


def postgres_url() -> str:
    """A PostgreSQL URL for the test session's manifest database; skips the test when there is no server."""
    global _postgres
    with _lock:
        if _postgres is None:
            try:
                _postgres = (*_start_postgres(), None)
            except Exception as error:  # binaries present but the server would not start: fail every such test
                _postgres = (None, None, str(error))
        url, reason, failure = _postgres
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    if url is None:
        pytest.skip(reason or "no PostgreSQL server")
    return url


def _start_postgres() -> tuple[str | None, str | None]:
    if os.environ.get(POSTGRES_ENV):
        return os.environ[POSTGRES_ENV], None
    how = f"apt-get install postgresql, or set {POSTGRES_ENV}=postgresql://USER@HOST:PORT/DATABASE"
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed: pip install 'psycopg[binary]'"
    binaries = _postgres_binaries()
    if binaries is None:
        return (
            None,
            f"PostgreSQL server binaries (initdb, pg_ctl) not found in PATH or /usr/lib/postgresql/*/bin: {how}",
        )
    as_user: dict[str, Any] = {}
    directory = Path(tempfile.mkdtemp(prefix="lychee-postgres-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(directory, ignore_errors=True)
            return None, f"running as root and there is no 'postgres' user to run initdb as: {how}"
        os.chown(directory, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    environment = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    data, log = directory / "data", directory / "server.log"

    def run(*command: str) -> None:
        done = subprocess.run(
            command, cwd=directory, env=environment, capture_output=True, text=True, timeout=120, **as_user
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            port = free_port()
            options = (
                f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={directory} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
                break
            except RuntimeError:
                if attempt == 2:
                    raise
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        text = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"cannot start a throwaway PostgreSQL server: {error}\n{text}") from None

    def stop() -> None:
        subprocess.run(
            [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            cwd=directory,
            env=environment,
            capture_output=True,
            timeout=60,
            **as_user,
        )
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(stop)
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as connection:
                connection.execute("CREATE DATABASE lychee_test")
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return f"postgresql://postgres@127.0.0.1:{port}/lychee_test", None
