"""A one-node Slurm cluster in a temporary folder: munged, slurmctld and slurmd started from a
generated slurm.conf (no systemd, nothing under /etc), for tests that submit real batch jobs.

Needs Debian's ``slurm-wlm`` and ``munge`` and root (slurmd starts job steps as the submitting
user). ``.ci/run`` installs the packages on CI machines that lack them.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from megatron_rcm.parallel.runtime import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
# the node takes the machine's name: the trainer resolves SLURM_JOB_NODELIST for its rendezvous
NODE = socket.gethostname()


def missing_requirements():
    """Why this machine cannot run the cluster (a sentence), or None."""
    missing = [d for d in (*DAEMONS, "sbatch", "scancel", "scontrol") if shutil.which(d) is None
               and not os.path.exists(f"/usr/sbin/{d}")]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start job steps"
    return None


def _daemon(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def _slurm_conf(folder, cpus):
    host = socket.gethostname()
    return f"""\
ClusterName=rcmtest
# job ids (and so the trainer's rendezvous port, 20000 + id % 20000) differ from one cluster to the next
FirstJobId={random.randrange(1, 19000)}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={folder}/munge.socket,cred_expire=5
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# the main scheduling loop every second (default 60 s): a requeued job starts once its hold ends
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=600
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """Start with ``with SlurmCluster(folder) as cluster:``; ``cluster.env`` is the environment
    for Slurm's commands (SLURM_CONF points at the generated slurm.conf)."""

    def __init__(self, folder, cpus=4):
        self.folder = Path(folder)
        self.cpus = cpus
        self.conf = self.folder / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._procs = []

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _start(self):
        f = self.folder
        for sub in ("state", "spool", "munge"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text(_slurm_conf(f, self.cpus))
        self._run([_daemon("munged"), "--foreground", "--force", f"--socket={f}/munge.socket",
                   f"--key-file={key}", f"--pid-file={f}/munge/munged.pid", f"--log-file={f}/munge/munged.log",
                   f"--seed-file={f}/munge/munged.seed"], "munged.out")
        self._wait(lambda: (f / "munge.socket").exists(), "munged did not create its socket", "munge/munged.log")
        self._run([_daemon("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        self._wait(lambda: self.command("scontrol", "ping", check=False).returncode == 0,
                   "slurmctld does not answer", "slurmctld.log")
        self._run([_daemon("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)], "slurmd.out")
        self._wait(self._node_idle, "the node did not become idle", "slurmd.log")

    def _run(self, command, log):
        out = open(self.folder / log, "w")
        self._procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True))
        out.close()

    def _node_idle(self):
        state = self.command("sinfo", "-h", "-n", NODE, "-o", "%T", check=False).stdout.strip()
        return state == "idle"

    def _wait(self, ready, what, log, timeout=60):
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self._procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{what} ({', '.join(dead) or 'timeout'} ); {log}:\n{self.log(log)}")
            time.sleep(0.2)

    def log(self, name, tail=3000):
        path = self.folder / name
        return path.read_text(errors="replace")[-tail:] if path.exists() else "(none)"

    def command(self, *args, check=True, timeout=60, env_extra=None):
        result = subprocess.run(args, env={**self.env, **(env_extra or {})}, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def job(self, job_id):
        """``scontrol show job``'s fields of one job as a dict."""
        out = self.command("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def stop(self):
        """Cancel what is left, then stop the daemons (slurmd first): each by its process id."""
        if self.conf.exists() and self._procs:
            self.command("scancel", "--full", "-u", "root", check=False)
            # slurmd's step daemons outlive it: let them end the jobs' processes first
            deadline = time.monotonic() + 60
            while self.command("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for proc in reversed(self._procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self._procs.clear()
