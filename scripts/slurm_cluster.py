#!/usr/bin/env python3
"""A real single-node SLURM cluster, with accounting, living in one directory; for tests and CI.

    python scripts/slurm_cluster.py install     # apt-get the Debian packages if a command is missing (root)
    python scripts/slurm_cluster.py up DIR      # start it; prints `export SLURM_CONF=DIR/etc/slurm.conf`
    python scripts/slurm_cluster.py down DIR    # stop exactly the daemons `up` started (idempotent)

From Python:  with SlurmCluster(DIR) as env: ...   (env is {"SLURM_CONF": ...}, also set in os.environ)
Client commands (sbatch, squeue, sacct, scontrol, scancel) find the cluster through SLURM_CONF.

Everything is under DIR: configs, munge key and socket, MariaDB datadir, slurmctld state, DIR/log/<daemon>.log,
and DIR/pids ("pid name" per daemon started). Nothing in /etc is used: a fresh machine needs only `install`,
and clusters can run side by side (free ports are picked at each `up`).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurmdbd", "munge", "mariadb-server"]
COMMANDS = ["munged", "mungekey", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
            "sbatch", "squeue", "sacct", "sacctmgr", "sinfo", "scontrol", "scancel"]
CLUSTER_NAME = "segsweep"
# Lifetime of job credentials (AuthInfo cred_expire; default 120 s, values below 5 are rejected). A requeued
# job is also held back that long (BeginTime = requeue + cred_expire + 1 s); 5 s suffices on one node.
CRED_EXPIRE_S = 5


class ClusterError(RuntimeError):
    pass


def install():
    """apt-get the packages unless every command is already there."""
    if all(shutil.which(c) for c in COMMANDS):
        print("slurm_cluster: packages already installed")
        return
    # Without systemd, the packages' postinst scripts would start munged, mariadb (global key, port 3306)
    # and try slurmctld/slurmd/slurmdbd through invoke-rc.d; a policy-rc.d exiting 101 forbids that.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if own_policy:
            policy.unlink()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid, name):
    """Is pid still our daemon? False once it exited (or is a zombie), or if the pid now runs something else."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and comm == name[:15]  # comm: 15 chars at most


class SlurmCluster:
    def __init__(self, directory, cpus=None):
        """``cpus``: job slots of the node (CPUs=); more than the machine has are declared with slurmd's
        config_overrides (oversubscribed, e.g. 4 one-CPU jobs on 2 cores for a benchmark of the study runner)."""
        self.dir = Path(directory).resolve()
        self.cpus = cpus or os.cpu_count()
        self.conf = self.dir / "etc" / "slurm.conf"
        self.pids = self.dir / "pids"
        self.munge_socket = self.dir / "munge" / "socket"
        self.env = {"SLURM_CONF": str(self.conf)}
        self._procs = {}  # pid -> Popen of the daemons started by this process, to reap them when stopped

    def __enter__(self):
        self._saved_conf = os.environ.get("SLURM_CONF")
        os.environ.update(self.up())
        return dict(self.env)

    def __exit__(self, *exc):
        self.down()
        os.environ.pop("SLURM_CONF")
        if self._saved_conf is not None:
            os.environ["SLURM_CONF"] = self._saved_conf

    def up(self, timeout=60):
        """Start munged, mariadbd, slurmdbd, slurmctld, slurmd; return the env clients need."""
        missing = [c for c in COMMANDS if not shutil.which(c)]
        if missing:
            raise ClusterError(f"missing {' '.join(missing)}: run `python scripts/slurm_cluster.py install`")
        if len(str(self.munge_socket)) > 100:  # AF_UNIX socket paths are limited to 108 bytes
            raise ClusterError(f"directory path too long for the unix sockets inside it: {self.dir}")
        self.down()  # daemons left over from an earlier `up` of this directory
        for sub in ("etc", "log", "run", "state", "spool", "munge", "mysql"):
            (self.dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._write_configs()
            key = self.dir / "munge" / "key"
            if not key.exists():
                self._run("mungekey", "--create", f"--keyfile={key}")
            # --force: munged otherwise wants every directory above its socket searchable by all users
            # (pytest's tmp dirs are 0700); all clients here are root. In the foreground it logs to stderr.
            self._start("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                                   f"--key-file={key}", f"--pid-file={self.dir}/run/munged.pid",
                                   f"--seed-file={self.dir}/munge/seed"], self.munge_socket.exists, timeout)
            self._start_mariadb(timeout)
            clusters = ("sacctmgr", "-n", "-P", "list", "cluster", "format=cluster")
            self._start("slurmdbd", ["slurmdbd", "-D"], lambda: self._ok(*clusters), timeout)
            # Register the cluster before slurmctld connects (root's account and association come with it):
            # jobs are then accounted, which is what lets submitit (via sacct) notice a job that died hard.
            if CLUSTER_NAME not in self._run(*clusters).stdout.split():
                self._run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)
            self._start("slurmctld", ["slurmctld", "-D"], lambda: self._ok("scontrol", "ping"), timeout)
            self._start("slurmd", ["slurmd", "-D"], lambda: self._out("sinfo", "-h", "-o", "%T") == ["idle"], timeout)
        except BaseException:
            self.down()
            raise
        return dict(self.env)

    def _write_configs(self):
        d, host = self.dir, socket.gethostname().split(".")[0]
        # slurmd drains the node if RealMemory exceeds what it finds, so claim 90 % of it.
        mem_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20 * 9 // 10
        self.ports = {name: _free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}"  # our munged, not /run/munge's
        self.conf.write_text(f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={self.ports['slurmctld']}
SlurmdPort={self.ports['slurmd']}
{auth},cred_expire={CRED_EXPIRE_S}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
MailProg=/bin/true
# no cgroups in the sandbox: track job processes through /proc, no CPU binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# A requeued job becoming eligible (see CRED_EXPIRE_S) only starts at the next main-scheduler pass:
# every 60 s by default, and backfill skips its passes when nothing changed. Pass every second instead.
SchedulerParameters=sched_interval=1
# the node is usable as soon as its slurmd registers, even after having been DOWN
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.ports['slurmdbd']}
# with slurmdbd, AccountingStoragePass names the munge socket used to talk to it
AccountingStoragePass={self.munge_socket}
{"SlurmdParameters=config_overrides" if self.cpus > os.cpu_count() else ""}
NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        dbd_conf = d / "etc" / "slurmdbd.conf"
        dbd_conf.touch(mode=0o600)  # slurmdbd refuses a config others may read (it holds the DB password)
        dbd_conf.write_text(f"""\
{auth}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports['slurmdbd']}
SlurmUser=root
PidFile={d}/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['mariadb']}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
""")

    def _start_mariadb(self, timeout):
        data = self.dir / "mysql"
        if not (data / "mysql").exists():
            self._run("mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={data}", "--skip-test-db")
        # runs at every start: the TCP login slurmdbd uses (idempotent statements)
        init = self.dir / "etc" / "mariadb-init.sql"
        init.write_text("CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';\n"
                        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n")

        # --no-defaults: ignore /etc/mysql; without --log-error it logs to stderr, i.e. DIR/log/mariadbd.log.
        # Its unix socket appears when it accepts connections (on the TCP port too).
        sock = self.dir / "run" / "mariadb.sock"
        self._start("mariadbd", ["mariadbd", "--no-defaults", "--user=root", f"--datadir={data}",
                                 f"--port={self.ports['mariadb']}", "--bind-address=127.0.0.1",
                                 "--skip-name-resolve", f"--socket={sock}", f"--init-file={init}",
                                 f"--pid-file={self.dir}/run/mariadb.pid"], sock.exists, timeout)

    def _start(self, name, argv, ready, timeout):
        """Start one daemon in the foreground, record its pid, wait until ready() (or raise, with its log)."""
        log = self.dir / "log" / f"{name}.log"
        with open(log, "ab") as out:  # own session (setsid): a Ctrl-C meant for the caller doesn't reach it
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, **self.env})
        self._procs[proc.pid] = proc
        with open(self.pids, "a") as f:
            f.write(f"{proc.pid} {name}\n")
        deadline = time.monotonic() + timeout
        while _alive(proc.pid, name) and time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.3)
        state = f"not ready after {timeout} s" if _alive(proc.pid, name) else f"exited ({proc.poll()})"
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-20:])
        raise ClusterError(f"{name} {state}; last lines of {log}:\n{tail}")

    def _run(self, *argv, check=True):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, **self.env})
        if check and r.returncode:
            raise ClusterError(f"`{' '.join(argv)}` failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def _ok(self, *argv):
        return self._run(*argv, check=False).returncode == 0

    def _out(self, *argv):
        """The words a client command printed; [] if it failed."""
        r = self._run(*argv, check=False)
        return r.stdout.split() if r.returncode == 0 else []

    def down(self, grace=15):
        """Stop the recorded daemons, newest first: SIGTERM, wait, then SIGKILL. Safe to call repeatedly."""
        if not self.pids.exists():
            return
        daemons = [(int(pid), name) for pid, name in map(str.split, self.pids.read_text().splitlines())]
        if any(name == "slurmctld" and _alive(pid, name) for pid, name in daemons):
            self._cancel_jobs()
        for pid, name in reversed(daemons):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if _alive(pid, name):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:  # exited just now
                        pass
                deadline = time.monotonic() + grace
                while _alive(pid, name) and time.monotonic() < deadline:
                    time.sleep(0.1)
            if pid in self._procs:
                self._procs.pop(pid).poll()  # reap it if it is our child, or it stays a zombie
        self.pids.unlink()

    def _cancel_jobs(self, timeout=15):
        # A job's processes (slurmstepd and below) outlive slurmd: have SLURM end them first. A plain scancel
        # sends SIGTERM and waits KillWait (30 s) before SIGKILL, and submitit jobs ignore SIGTERM; SIGKILL
        # sent to each step ("<job>.<step>"; the batch shell via --batch) ends them at once.
        for step in self._out("squeue", "-h", "-s", "-o", "%i"):
            job, _, name = step.partition(".")
            self._run("scancel", "--signal=KILL", *(["--batch", job] if name == "batch" else [step]), check=False)
        jobs = self._out("squeue", "-h", "-o", "%i")
        if jobs:
            self._run("scancel", *jobs, check=False)  # also pending ones
        deadline = time.monotonic() + timeout
        while self._out("squeue", "-h", "-o", "%i") and time.monotonic() < deadline:
            time.sleep(0.3)


def main(argv):
    if argv[:1] == ["install"]:
        install()
    elif len(argv) == 2 and argv[0] == "up":
        t0 = time.monotonic()
        env = SlurmCluster(argv[1]).up()
        print(f"# cluster up in {time.monotonic() - t0:.1f} s; stop it with: {sys.argv[0]} down {argv[1]}")
        print(f"export SLURM_CONF={env['SLURM_CONF']}")
    elif len(argv) == 2 and argv[0] == "down":
        SlurmCluster(argv[1]).down()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
