"""The multi-node launch (slurm/torchrun_node.sh, which slurm/train_multinode.sbatch starts on every
node): two torchrun agents on this machine, as two nodes of one process each, meeting at a c10d
rendezvous on localhost, train what one node with two processes trains."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RUN = ["dataset=synthetic", "dataset.image_shape=[1,8,8]", "dataset.mean=[0.5]", "dataset.std=[0.2887]",
       "dataset.train_size=256", "dataset.test_size=64", "batch_size=32", "epochs=1", "method=msam", "method.m=4",
       "device=cpu", "log_every_steps=0"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_state(runs: Path) -> tuple[str, dict, dict]:
    (checkpoint,) = runs.glob("*/last.pt")
    summary = json.loads((checkpoint.parent / "summary.json").read_text())
    return checkpoint.parent.name, torch.load(checkpoint, weights_only=True)["model"], summary


def test_two_nodes_train_what_one_node_with_two_processes_trains(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSAM_PYTHON": sys.executable, "NPROC": "1", "SLURM_NNODES": "2",
           "SLURM_JOB_ID": "4242", "MSAM_RDZV_HOST": "127.0.0.1", "MSAM_RDZV_PORT": str(free_port())}
    nodes = [subprocess.Popen(["bash", str(REPO / "slurm" / "torchrun_node.sh"), *RUN, f"paths.runs={tmp_path}/two"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(out[-2000:] for out in outputs)

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    single = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "msam.train", *RUN,
                             f"paths.runs={tmp_path}/one"], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]

    name_two, two, summary_two = final_state(tmp_path / "two")
    name_one, one, summary_one = final_state(tmp_path / "one")
    assert name_two == name_one  # the same run: the layout of processes is not part of its identity
    assert summary_two["derived"]["processes"] == 2 and summary_two["derived"]["m_per_process"] == 2
    assert all(torch.equal(two[key], one[key]) for key in one)  # same ranks, same shards, same sums
    assert summary_two["test_acc"] == summary_one["test_acc"]


def test_the_batch_script_starts_one_node_script_per_node():
    script = (REPO / "slurm" / "train_multinode.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --signal=B:USR2@" in script
    assert "srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash slurm/torchrun_node.sh" in script
    assert subprocess.run(["bash", "-n", str(REPO / "slurm" / "train_multinode.sbatch")]).returncode == 0
