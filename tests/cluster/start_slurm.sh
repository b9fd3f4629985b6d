#!/usr/bin/env bash
# Start a single-node Slurm test cluster (munged, slurmctld, slurmd) on this machine, its state, spool, pid and log
# files under SCRATCH.  Needs root and Debian's slurmctld, slurmd, slurm-client and munge packages.  No accounting
# (no slurmdbd): Snakemake must poll with `--slurm-status-command squeue`; finished jobs stay visible to squeue and
# scontrol for an hour (MinJobAge).  Stop it with stop_slurm.sh SCRATCH, also after a failed start.
#
#   tests/cluster/start_slurm.sh SCRATCH
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 SCRATCH" >&2; exit 2; }
mkdir -p "$1"
scratch=$(realpath "$1")
# The jobstep plugin drops SLURM_CONF (every SLURM_* variable) before its srun, so the configuration must be at the
# compiled-in default path.
conf=/etc/slurm/slurm.conf
marker="# deqbench single-node test cluster"
if [ -e "$conf" ] && ! grep -qF "$marker" "$conf"; then
    echo "error: $conf exists and was not written by $0; not replacing a real cluster's configuration" >&2
    exit 3
fi

host=$(hostname -s)
cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc: it reports OMP_NUM_THREADS when that is set
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)  # below the real total, or slurmd drains
mkdir -p "$scratch/state" "$scratch/spool" "$scratch/log" /etc/slurm
cat > "$conf" <<CONF
$marker (tests/cluster/start_slurm.sh); state in $scratch
ClusterName=deqbenchtest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$scratch/state
SlurmdSpoolDir=$scratch/spool
SlurmctldPidFile=$scratch/slurmctld.pid
SlurmdPidFile=$scratch/slurmd.pid
SlurmctldLogFile=$scratch/log/slurmctld.log
SlurmdLogFile=$scratch/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# munged: reuse one that already runs (then stop_slurm.sh leaves it alone), else start it and mark it as ours.
if alive /run/munge/munged.pid; then
    echo "munged already running (pid $(cat /run/munge/munged.pid)); reusing it"
else
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey -c
    runuser -u munge -- /usr/sbin/munged
    echo /run/munge/munged.pid > "$scratch/munged.ours"
fi

/usr/sbin/slurmctld
for _ in $(seq 50); do alive "$scratch/slurmctld.pid" && scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
/usr/sbin/slurmd
for _ in $(seq 150); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    [ "$state" = idle ] && { echo "slurm up: node $host, $cpus CPUs, ${mem_mb} MB, partition debug"; exit 0; }
    sleep 0.2
done
echo "error: the node did not become idle (sinfo: '${state:-}'); logs in $scratch/log" >&2
exit 1
