#!/usr/bin/env bash
# Bring up a real SLURM (Debian's slurm-wlm 22.05 + munge) on this machine for the
# integration tests:
#   - node "$(hostname)" in partition "debug" (default): 4 fake GPUs (empty device files);
#   - nodes node1 and node2 in partition "twonode", each a slurmd in its own network and UTS
#     namespace (veth pairs on a bridge, 10.77.0.11/.12; the host is 10.77.0.1), 1 fake GPU
#     each: a 2-node cluster on one machine. Skipped (single node only) where namespaces
#     cannot be made; /run/distmis-slurm/two_nodes exists when they are up.
# No slurmdbd: tests use `--slurm-status-command squeue` and MinJobAge keeps finished jobs.
# Idempotent; needs root. Usage: tests/slurm/start_slurm.sh
set -euo pipefail

host=$(hostname)
conf_dir=/etc/slurm
state_dir=/run/distmis-slurm
bridge=br-distmis
subnet=10.77.0

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v ip >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge iproute2 >/dev/null
fi

mkdir -p "$conf_dir" "$state_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/munge
for i in 0 1 2 3 4 5; do [ -e "/dev/fakegpu$i" ] || touch "/dev/fakegpu$i"; done

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

setup_namespaces() {
    ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge || return 1
    # Here-strings, not pipes into grep -q: under pipefail, grep quitting at its match can
    # fail the writer with SIGPIPE, and the check reads "absent" (then "already assigned").
    grep -qF "inet $subnet.1/" <<<"$(ip addr show dev "$bridge")" ||
        ip addr add "$subnet.1/24" dev "$bridge" || return 1
    ip link set "$bridge" up || return 1
    for n in 1 2; do
        ns=distmis-node$n
        if ! grep -qw "$ns" <<<"$(ip netns list)"; then
            ip netns add "$ns" || return 1
            ip link add "veth-dm$n" type veth peer name eth0 netns "$ns" || return 1
            ip link set "veth-dm$n" master "$bridge" || return 1
            ip link set "veth-dm$n" up || return 1
            ip -n "$ns" addr add "$subnet.1$n/24" dev eth0 || return 1
            ip -n "$ns" link set eth0 up || return 1
            ip -n "$ns" link set lo up || return 1
        fi
        grep -q "^$subnet.1$n node$n\$" /etc/hosts || echo "$subnet.1$n node$n" >> /etc/hosts
    done
}

two_nodes=0
if setup_namespaces 2>"$state_dir/namespaces.err"; then
    two_nodes=1
else
    echo "network namespaces unavailable, single node only: $(cat "$state_dir/namespaces.err")" >&2
fi

if [ "$two_nodes" = 1 ]; then
    ctld_host="$host($subnet.1)"
    extra_nodes="NodeName=node[1-2] NodeAddr=$subnet.1[1-2] CPUs=2 RealMemory=8000 Gres=gpu:1 State=UNKNOWN
PartitionName=twonode Nodes=node[1-2] MaxTime=INFINITE State=UP"
    extra_gres="NodeName=node1 Name=gpu File=/dev/fakegpu4
NodeName=node2 Name=gpu File=/dev/fakegpu5"
else
    ctld_host="$host"
    extra_nodes=""
    extra_gres=""
fi

new_conf=$(cat <<CONF
ClusterName=distmis
SlurmctldHost=$ctld_host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
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
# Nodes may declare more CPUs than the test machine has (jobs sleep or train tiny models).
SlurmdParameters=config_overrides
NodeName=$host CPUs=8 RealMemory=16000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
$extra_nodes
CONF
)
new_gres=$(printf 'AutoDetect=off\nNodeName=%s Name=gpu File=/dev/fakegpu[0-3]\n%s\n' "$host" "$extra_gres")

if [ "$new_conf" != "$(cat "$conf_dir/slurm.conf" 2>/dev/null)" ] || [ "$new_gres" != "$(cat "$conf_dir/gres.conf" 2>/dev/null)" ]; then
    # A changed configuration (e.g. the controller address) needs fresh daemons.
    pkill -x slurmctld 2>/dev/null || true
    pkill -x slurmd 2>/dev/null || true
    for _ in $(seq 50); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.1; done
    printf '%s\n' "$new_conf" > "$conf_dir/slurm.conf"
    printf '%s\n' "$new_gres" > "$conf_dir/gres.conf"
fi

mkdir -p "/var/spool/slurmd/$host" /var/spool/slurmd/node1 /var/spool/slurmd/node2
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -f "slurmd -N $host" >/dev/null || slurmd -N "$host"
if [ "$two_nodes" = 1 ]; then
    for n in 1 2; do
        pgrep -f "slurmd -N node$n" >/dev/null ||
            # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup tree slurmd needs.
            nsenter --net="/run/netns/distmis-node$n" unshare --uts sh -c "hostname node$n && exec slurmd -N node$n"
    done
fi

expected=$(( 1 + 2 * two_nodes ))
for _ in $(seq 150); do
    up=$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc)/' | sort -u | wc -l)
    if [ "$up" -ge "$expected" ]; then
        rm -f "$state_dir/two_nodes"
        [ "$two_nodes" = 1 ] && touch "$state_dir/two_nodes"
        echo "slurm up: $(sinfo -h -N -o '%N/%P/%t' | tr '\n' ' ')"
        exit 0
    fi
    sleep 0.2
done
echo "slurm did not come up:" >&2
sinfo -N >&2 || true
tail -20 /var/log/slurm/slurmctld.log >&2
exit 1
