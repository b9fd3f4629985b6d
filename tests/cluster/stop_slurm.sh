#!/usr/bin/env bash
# Stop the test cluster that start_slurm.sh SCRATCH started: cancel its jobs, then stop every daemon by its pid file
# (slurmd while slurmctld still runs, then slurmctld, then munged if start_slurm.sh started it) and remove the
# configuration it wrote.  Safe to run after a failed or partial start, and twice.
#
#   tests/cluster/stop_slurm.sh SCRATCH
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: $0 SCRATCH" >&2; exit 2; }
scratch=$(realpath -m "$1")
conf=/etc/slurm/slurm.conf

# Stop the daemon whose pid is in file $1: SIGTERM, up to 30 s, then SIGKILL.
stop_pid_file() {
    local file=$1 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then echo "pid $pid ($file) ignored SIGTERM; killing it" >&2; kill -9 "$pid"; fi
    fi
    return 0
}

ours=0
# start_slurm.sh names its scratch directory in the first line of the configuration it writes.
[ -e "$conf" ] && grep -qF "# deqbench single-node test cluster (tests/cluster/start_slurm.sh); state in $scratch" "$conf" && ours=1
if [ "$ours" = 1 ] && [ -s "$scratch/slurmctld.pid" ] && kill -0 "$(cat "$scratch/slurmctld.pid")" 2>/dev/null; then
    # Jobs left by an interrupted run would keep their processes after slurmd stops.
    scancel --full --user=root 2>/dev/null
    for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
fi
stop_pid_file "$scratch/slurmd.pid"
stop_pid_file "$scratch/slurmctld.pid"
if [ -s "$scratch/munged.ours" ]; then
    stop_pid_file "$(cat "$scratch/munged.ours")"
    rm -f "$scratch/munged.ours"
fi
[ "$ours" = 1 ] && rm -f "$conf"
exit 0
