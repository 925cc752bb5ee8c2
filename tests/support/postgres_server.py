"""A PostgreSQL server for the tests: the one $DAGSTER_PG_* names (`.ci/run` starts the machine's
cluster and exports them), else a throwaway cluster from the machine's PostgreSQL binaries
(Debian's `postgresql` package: /usr/lib/postgresql/<version>/bin) in a temp folder, on a free
port, stopped and deleted afterwards. Either way each user of `postgres_database` gets a fresh
database. Where neither works, `PostgresUnavailable` says why (the tests skip with that reason).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started or reached here; the message says why."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    db: str  # a database to connect to for CREATE DATABASE

    def env(self, db: str | None = None) -> dict[str, str]:
        """The DAGSTER_PG_* variables deploy/dagster-postgres.yaml reads."""
        values = (self.host, str(self.port), self.user, self.password, db or self.db)
        return dict(zip(PG_ENV, values, strict=True))

    def connect(self, db: str | None = None):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=db or self.db
        )


def _binaries() -> Path | None:
    """The newest PostgreSQL server bin folder: Debian keeps initdb/pg_ctl off PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """$DAGSTER_PG_* if set, else a throwaway cluster; raises PostgresUnavailable saying why not."""
    if os.environ.get("DAGSTER_PG_HOST"):
        missing = [name for name in PG_ENV if not os.environ.get(name)]
        if missing:
            raise PostgresUnavailable(f"DAGSTER_PG_HOST is set but {', '.join(missing)} is not")
        yield PostgresServer(
            host=os.environ["DAGSTER_PG_HOST"],
            port=int(os.environ["DAGSTER_PG_PORT"]),
            user=os.environ["DAGSTER_PG_USER"],
            password=os.environ["DAGSTER_PG_PASSWORD"],
            db=os.environ["DAGSTER_PG_DB"],
        )
        return
    with _throwaway_cluster() as server:
        yield server


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[PostgresServer]:
    bin_dir = _binaries()
    if bin_dir is None:
        raise PostgresUnavailable(
            "no PostgreSQL server here (no initdb in /usr/lib/postgresql/*/bin or on PATH): "
            "install Debian's postgresql package (.ci/run does), or set DAGSTER_PG_HOST/PORT/USER/PASSWORD/DB"
        )
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="pbi-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder, ignore_errors=True)
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server") from None
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    user, password, port = "pbi", secrets.token_hex(8), _free_port()
    data, log = folder / "data", folder / "server.log"
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    if as_user:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120, cwd=folder)

    try:
        done = run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}", "--auth=scram-sha-256")
        if done.returncode:
            raise PostgresUnavailable(f"initdb failed: {(done.stderr or done.stdout).strip()[-500:]}")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        done = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        if done.returncode:
            tail = log.read_text()[-500:] if log.exists() else done.stderr
            raise PostgresUnavailable(f"pg_ctl start failed: {tail.strip()}")
        try:
            yield PostgresServer(host="127.0.0.1", port=port, user=user, password=password, db="postgres")
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """A new, empty database on `server` (dropped afterwards); yields its name."""
    name = f"pbi_test_{secrets.token_hex(4)}"
    admin = server.connect()
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
