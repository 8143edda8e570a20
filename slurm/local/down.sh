#!/usr/bin/env bash
# Stop the daemons slurm/local/up.sh started, by PID.
state=${MSAM_SLURM_STATE:-/tmp/msam-slurm}
for pidfile in "$state/slurmd.pid" "$state/slurmctld.pid"; do
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
pkill -x munged 2>/dev/null
sleep 1
exit 0
