"""Checkpoint on a scheduler's warning signal, then hand over (to submitit's requeue, if any).

SLURM sends SIGUSR2 some time before a job's time limit or preemption (sbatch --signal, or
hydra-submitit-launcher's signal_delay_s). The handler only sets a flag; the engine looks at
it after every optimizer step, writes a checkpoint of the exact position (mid-epoch included)
and then calls the handler that was installed before ours: under submitit that requeues the
job, which resumes from the same run directory. Without one, the process exits with code 3
and a one-line message; rerunning the command resumes.
"""

from __future__ import annotations

import logging
import signal
import sys

log = logging.getLogger("msam")
EXIT_PREEMPTED = 3


class Preemption:
    def __init__(self, signum: int = signal.SIGUSR2) -> None:
        self.signum = signum
        self.requested = False
        self.previous = None

    def install(self) -> "Preemption":
        self.previous = signal.signal(self.signum, self._flag)
        return self

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(self.signum, self.previous)
            self.previous = None

    def _flag(self, signum, frame) -> None:
        self.requested = True

    def hand_over(self, where: str) -> None:
        """Called once the checkpoint is written: requeue (submitit) or exit."""
        log.warning(f"caught {signal.Signals(self.signum).name}: checkpointed at {where}; handing over")
        previous = self.previous
        self.uninstall()
        if callable(previous):
            previous(self.signum, None)  # submitit: requeue this job, then exit
        print(f"msam-train: stopped on {signal.Signals(self.signum).name} after checkpointing at {where}; "
              f"run the same command again to resume", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
