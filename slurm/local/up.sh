#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for CI and for trying the launchers:
# installs Debian's slurmctld/slurmd/munge if missing, writes a minimal slurm.conf, starts the
# daemons by hand (no systemd) and puts a small `sacct` stand-in on PATH (submitit reads job
# states with sacct; this cluster has no accounting database). Needs root.
#   source slurm/local/up.sh   ...   bash slurm/local/down.sh
set -eu
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${MSAM_SLURM_STATE:-/tmp/msam-slurm}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  packages="slurmctld slurmd slurm-client munge"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages >/dev/null; }
fi
mkdir -p "$state"/{spool,ctld,log,bin} /run/munge /etc/munge /etc/slurm
node=$(hostname -s)
cpus=$(nproc)
memory=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') - 512 ))

# munge: a key, and the daemon as user munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c "munged"

[ -f /etc/slurm/slurm.conf ] && scontrol ping 2>/dev/null | grep -q "is UP" || cat > /etc/slurm/slurm.conf <<CONF
ClusterName=msam-ci
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmdSpoolDir=$state/spool
StateSaveLocation=$state/ctld
SlurmUser=root
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=86400
JobRequeue=1
KillWait=5
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

if ! scontrol ping 2>/dev/null | grep -q "is UP"; then
  slurmctld -i
  slurmd
fi
cp "$here/sacct" "$state/bin/sacct"; chmod +x "$state/bin/sacct"
export PATH="$state/bin:$PATH"
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed" && break
  sleep 1
done
sinfo
