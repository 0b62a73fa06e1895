"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, a throw-away cluster in a temporary
directory, on a free loopback port, stopped at the end of the session.

initdb refuses to run as root, so under root the cluster runs as the `postgres` user the Debian package
creates (its files in a directory that user owns); otherwise as the current user. Trust authentication on
127.0.0.1 only: nothing else can reach it. `scripts/test.sh` installs the package when it is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "face"


def _bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: run scripts/test.sh (installs postgresql)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    root: Path
    port: int
    run_as: str | None  # the user the server runs as when the tests run as root

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def pg_ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = self._cmd(_bin("pg_ctl"), "-D", str(self.data), *args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        # -w: pg_ctl returns once the server accepts connections.
        self.pg_ctl("-l", str(self.root / "server.log"), "-o", opts, "-w", "-t", "120", "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """`pg_ctl restart`: every connection is cut; returns once the server accepts connections again."""
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        self.pg_ctl(
            "-m", "fast", "-l", str(self.root / "server.log"), "-o", opts, "-w", "-t", "120", "restart"
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def start_server() -> PgServer:
    run_as = None
    root = Path(tempfile.mkdtemp(prefix="face-agent-pg-"))
    if os.geteuid() == 0:
        run_as = "postgres"
        try:
            pw = pwd.getpwnam(run_as)
        except KeyError as exc:
            raise RuntimeError("running as root needs the postgres user (Debian package postgresql)") from exc
        os.chmod(root, 0o755)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = PgServer(root, _free_port(), run_as)
    cmd = server._cmd(
        _bin("initdb"), "-D", str(server.data), "-U", SUPERUSER, "-A", "trust", "--no-sync", "-E", "UTF8"
    )
    subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    server.start()
    return server


def migrated_database(server: PgServer) -> str:
    """A fresh database with the gallery schema (what `face-agent hub migrate` does); its URL."""
    from agent.gallery.db import PostgresDb
    from agent.gallery.pg_schema import migrate

    url = server.new_database()
    db = PostgresDb(url, pool_size=1, timeout_s=10)
    try:
        migrate(db)
    finally:
        db.close()
    return url
