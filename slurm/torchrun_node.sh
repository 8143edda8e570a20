#!/bin/bash
# One node's part of a multi-node run (started once per node by slurm/train_multinode.sbatch
# through srun): torchrun with this node's GPUs, meeting the other nodes' agents at a c10d
# rendezvous on the job's first node. Every argument goes to msam-train.
#   SLURM_NNODES, SLURM_JOB_NODELIST, SLURM_JOB_ID   set by SLURM
#   NPROC            processes on this node (default: its GPUs, else 1)
#   MSAM_RDZV_HOST   rendezvous host (default: the job's first node; set it to pick another interface)
#   MSAM_RDZV_PORT   rendezvous port (default 29500)
#   MSAM_PYTHON      the Python with msam installed (default .venv/bin/python)
# On SIGUSR2 (sent by the batch script to every node, see train_multinode.sbatch) it forwards
# the signal to its training processes, which agree on it at the next check, checkpoint once
# (rank 0 writes) and exit; then it exits too.
set -u
PYTHON=${MSAM_PYTHON:-.venv/bin/python}
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$NPROC" -ge 1 ] || NPROC=1
NNODES=${SLURM_NNODES:?run this under SLURM (or set SLURM_NNODES)}
HEAD=${MSAM_RDZV_HOST:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:?}" | head -n 1)}
PORT=${MSAM_RDZV_PORT:-29500}

"$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC" \
  --rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="msam-${SLURM_JOB_ID:-local}" \
  -m msam.train "$@" &
AGENT=$!

forward() {
  pkill -USR2 -P "$AGENT"   # the workers: torchrun's children on this node
  wait "$AGENT"
  exit $?
}
trap forward USR2

wait "$AGENT"
status=$?
exit $status
