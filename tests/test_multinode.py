"""The multi-node launch (slurm/torchrun_node.sh, which slurm/train_multinode.sbatch starts on every
node): two torchrun agents on this machine, as two nodes of one process each, meeting at a c10d
rendezvous on localhost, train what one node with two processes trains."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RUN = ["dataset=synthetic", "dataset.image_shape=[1,8,8]", "dataset.mean=[0.5]", "dataset.std=[0.2887]",
       "dataset.train_size=256", "dataset.test_size=64", "batch_size=32", "epochs=1", "method=msam", "method.m=4",
       "device=cpu", "log_every_steps=0", "method.impl=loop"]  # pinned: compared bit for bit across runs


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_state(runs: Path) -> tuple[str, dict, dict]:
    (checkpoint,) = runs.glob("*/last.pt")
    summary = json.loads((checkpoint.parent / "summary.json").read_text())
    return checkpoint.parent.name, torch.load(checkpoint, weights_only=True)["model"], summary


def start_two_nodes(tmp_path, args):
    """torchrun_node.sh twice, as SLURM's srun would start it on two nodes (each in its own
    process group, as each node's step is)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSAM_PYTHON": sys.executable, "NPROC": "1", "SLURM_NNODES": "2",
           "SLURM_JOB_ID": "4242", "MSAM_RDZV_HOST": "127.0.0.1", "MSAM_RDZV_PORT": str(free_port())}
    return [subprocess.Popen(["bash", str(REPO / "slurm" / "torchrun_node.sh"), *args], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for _ in range(2)]


def finish(nodes) -> list[str]:
    return [node.communicate(timeout=300)[0] for node in nodes]


def test_two_nodes_train_what_one_node_with_two_processes_trains(tmp_path):
    nodes = start_two_nodes(tmp_path, [*RUN, f"paths.runs={tmp_path}/two"])
    outputs = finish(nodes)
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
    assert "srun --kill-on-bad-exit=1 --ntasks-per-node=1" in script and "bash slurm/torchrun_node.sh" in script
    assert subprocess.run(["bash", "-n", str(REPO / "slurm" / "train_multinode.sbatch")]).returncode == 0


def test_usr2_to_every_process_of_both_nodes_checkpoints_and_the_rerun_ends_as_if_uninterrupted(tmp_path):
    """What scancel --signal=USR2 <job>.0 does before a time limit: every process of the step gets
    the signal (node scripts, torchrun agents, workers). The agents survive it, the workers agree,
    rank 0 checkpoints mid-run, all exit; the requeued job (the same command) finishes the run
    bit-identical to one that was never stopped."""
    long_run = [*RUN[:4], "dataset.train_size=4096", *RUN[5:7], "epochs=3", *RUN[8:], "preemption_check_every=2"]
    nodes = start_two_nodes(tmp_path, [*long_run, f"paths.runs={tmp_path}/stopped"])
    deadline = time.time() + 120
    while not list((tmp_path / "stopped").glob("*/provenance.json")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into the epoch's steps
    for node in nodes:
        os.killpg(node.pid, signal.SIGUSR2)
    outputs = finish(nodes)
    log = "\n".join(outputs)
    assert "checkpointed at epoch" in log, log[-3000:]
    # each node's agent outlived the signal and saw its worker leave with the preemption code (an
    # agent killed by USR2 would let SLURM end the step, killing workers in the middle of a save)
    assert all(re.search(r"exitcode\s*:\s*3 ", out) for out in outputs), log[-3000:]
    (run_dir,) = (tmp_path / "stopped").glob("*/")
    assert torch.load(run_dir / "last.pt", weights_only=True)["partial_epoch"]["batches"] > 0  # stopped mid-epoch
    assert not (run_dir / "summary.json").is_file()  # not finished

    resumed = start_two_nodes(tmp_path, [*long_run, f"paths.runs={tmp_path}/stopped"])
    outputs = finish(resumed)
    assert all(node.returncode == 0 for node in resumed), "\n".join(out[-2000:] for out in outputs)
    uninterrupted = start_two_nodes(tmp_path, [*long_run, f"paths.runs={tmp_path}/straight"])
    finish(uninterrupted)
    _, stopped, _ = final_state(tmp_path / "stopped")
    _, straight, _ = final_state(tmp_path / "straight")
    assert all(torch.equal(stopped[key], straight[key]) for key in straight)
