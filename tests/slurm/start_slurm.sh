#!/usr/bin/env bash
# Bring up a real one-node SLURM (Debian's slurm-wlm 22.05 + munge) on this machine for the
# integration tests: 4 fake GPUs (empty device files), squeue-based status (no slurmdbd).
# Idempotent; needs root. Usage: tests/slurm/start_slurm.sh [CPUS]
set -euo pipefail

cpus=${1:-8}
host=$(hostname)
conf_dir=/etc/slurm

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/munge
for i in 0 1 2 3; do [ -e "/dev/fakegpu$i" ] || touch "/dev/fakegpu$i"; done

# munge: one key, daemon running.
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

cat > "$conf_dir/slurm.conf" <<CONF
ClusterName=distmis
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# squeue must still know finished jobs when Snakemake asks (no slurmdbd here).
MinJobAge=600
KillWait=5
ReturnToService=2
# The node may declare more CPUs than the test machine has (jobs only sleep or train tiny models).
SlurmdParameters=config_overrides
NodeName=$host CPUs=$cpus RealMemory=16000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

cat > "$conf_dir/gres.conf" <<CONF
AutoDetect=off
Name=gpu File=/dev/fakegpu[0-3]
CONF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 100); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1)
    case "$state" in idle|mix|alloc) echo "slurm up: node $host $state"; exit 0 ;; esac
    sleep 0.2
done
echo "slurm did not come up; node state: ${state:-none}" >&2
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2
exit 1
