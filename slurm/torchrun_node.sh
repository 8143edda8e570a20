#!/bin/bash
# One node's part of a multi-node run (started once per node by slurm/train_multinode.sbatch
# through srun): torchrun with this node's GPUs, meeting the other nodes' agents at a c10d
# rendezvous on the job's first node. Every argument goes to msam-train.
#   SLURM_NNODES, SLURM_JOB_NODELIST, SLURM_JOB_ID   set by SLURM
#   NPROC            processes on this node (default: SLURM_GPUS_ON_NODE, else the GPUs nvidia-smi lists, else 1)
#   MSAM_RDZV_HOST   rendezvous host (default: the job's first node; set it to pick another interface)
#   MSAM_RDZV_PORT   rendezvous port (default 29500 + SLURM_JOB_ID % 1000: two jobs on one head node differ)
#   MSAM_PYTHON      the Python with msam installed (default .venv/bin/python)
# The process group on GPUs is NCCL with gloo beside it (dist_backend=auto), and gloo connects
# every rank at start-up: on nodes whose hostname resolves to a loopback address set
# GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME) to the interface the nodes share, or pass
# dist_backend=nccl.
# SIGUSR2 (scancel --signal=USR2 to this step, from train_multinode.sbatch) reaches every
# process of the step. The torchrun agent runs with USR2 ignored (its default action would kill
# it while its workers write their checkpoint); the workers install their own handler, agree on
# the signal within preemption_check_every steps, rank 0 checkpoints, all exit; then so does this.
set -u
PYTHON=${MSAM_PYTHON:-.venv/bin/python}
NPROC=${NPROC:-${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}}
[ "$NPROC" -ge 1 ] || NPROC=1
NNODES=${SLURM_NNODES:?run this under SLURM (or set SLURM_NNODES)}
HEAD=${MSAM_RDZV_HOST:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:?}" | head -n 1)}
PORT=${MSAM_RDZV_PORT:-$(( 29500 + ${SLURM_JOB_ID:-0} % 1000 ))}

forward() {
  pkill -USR2 -P "$AGENT"   # the workers, in case the signal reached this script only
  wait "$AGENT"
  exit $?
}
trap forward USR2

( trap '' USR2
  exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC" \
    --rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="msam-${SLURM_JOB_ID:-local}" \
    -m msam.train "$@" ) &
AGENT=$!

wait "$AGENT"
status=$?
exit $status
