"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` binaries, a fresh cluster in a temporary
directory, listening on 127.0.0.1 only, with one password-protected database per client; stopped and removed
afterwards. As root, every server command runs as the ``postgres`` user (the server refuses to run as root)."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from needs import require_system

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def pg_bin() -> Path:
    """The newest installed server's bin directory; a clear failure where PostgreSQL is not installed."""
    found = sorted((Path(p) for p in glob.glob(PG_BIN_GLOB) if (Path(p) / "initdb").is_file()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    require_system(f"PostgreSQL's server ({PG_BIN_GLOB}/initdb; the shared-store tests start a real one)",
                   bool(found), "apt-get install -y postgresql")
    return found[-1]


@dataclass
class PgServer:
    port: int
    host: str = "127.0.0.1"
    pid: int | None = None
    passwords: dict[str, str] = field(default_factory=dict)
    ctl: list[str] = field(default_factory=list)  # pg_ctl -D <data>
    start_args: list[str] = field(default_factory=list)  # -l <log> -o <options>

    def url(self, db: str) -> str:
        """SQLAlchemy URL of database ``db`` as the role of the same name, without its password: libpq reads it
        from the file ``$PGPASSFILE`` (see ``write_pgpass``), so it never shows in MLflow params or ``ps``. The
        driver is named: SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3; segsweep's ``postgres``
        extra installs psycopg2."""
        return f"postgresql+psycopg2://{db}@{self.host}:{self.port}/{db}"

    def restart(self, down_s: float) -> None:
        """Stop the server as a crash would (``-m immediate``: connections cut, no checkpoint), leave it down for
        ``down_s`` seconds, start it again on the same port and data."""
        _run([*self.ctl, "-m", "immediate", "-w", "-t", "30", "stop"], "pg_ctl stop")
        time.sleep(down_s)
        _run([*self.ctl, *self.start_args, "-w", "-t", "60", "start"], "pg_ctl start")
        self.pid = int((Path(self.ctl[-1]) / "postmaster.pid").read_text().split()[0])

    def write_pgpass(self, path: Path) -> Path:
        """A libpq password file (``host:port:database:user:password`` lines, mode 0600) for every database."""
        path.write_text("".join(f"{self.host}:{self.port}:{db}:{db}:{pw}\n" for db, pw in self.passwords.items()))
        path.chmod(0o600)
        return path


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str, log: Path | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        extra = f"\nserver log:\n{log.read_text(errors='replace')[-3000:]}" if log and log.exists() else ""
        raise RuntimeError(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}"
                           f"{proc.stderr[-2000:]}{extra}")
    return proc.stdout


@contextlib.contextmanager
def postgres_server(port: int, databases: tuple[str, ...]) -> Iterator[PgServer]:
    """``initdb`` a cluster in a new temporary directory, start it on 127.0.0.1:``port`` (its Unix socket in the
    same directory), create a login role with a random password and a database of the same name for each of
    ``databases``; at the end stop exactly this server (its postmaster PID) and remove the directory."""
    bindir = pg_bin()
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise AssertionError("running as root needs util-linux's runuser to start PostgreSQL as 'postgres'")
    # Not under pytest's tmp dir: that is private to root, and the server runs as 'postgres'.
    base = Path(tempfile.mkdtemp(prefix="segsweep-pg-"))
    data, log = base / "data", base / "server.log"
    server = PgServer(port=port)
    started = False
    try:
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
              "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"], "initdb")
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        started = True  # from here on, a half-started server is stopped below
        server.ctl, server.start_args = [str(bindir / "pg_ctl"), "-D", str(data)], ["-l", str(log), "-o", opts]
        _run([*server.ctl, *server.start_args, "-w", "-t", "60", "start"], "pg_ctl start", log)
        server.pid = int((data / "postmaster.pid").read_text().split()[0])
        for db in databases:
            server.passwords[db] = secrets.token_hex(12)
            sql = (f"CREATE ROLE {db} LOGIN PASSWORD '{server.passwords[db]}';"
                   f"CREATE DATABASE {db} OWNER {db};")
            for statement in sql.split(";")[:-1]:  # CREATE DATABASE cannot run in a multi-statement transaction
                _run([str(bindir / "psql"), "-h", str(base), "-p", str(port), "-U", "postgres", "-d", "postgres",
                      "-v", "ON_ERROR_STOP=1", "-qc", statement], "psql", log)
        yield server
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"], "pg_ctl stop")
            if server.pid is not None and _alive(server.pid):  # pg_ctl could not stop it: this server's PID only
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.pid, 9)
                for _ in range(50):
                    if not _alive(server.pid):
                        break
                    time.sleep(0.1)
        shutil.rmtree(base, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not running any more
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True
