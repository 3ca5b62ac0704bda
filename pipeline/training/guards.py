"""What keeps a days-long run from losing work: the non-finite step guard and the stop signals.

- **Non-finite steps.** A step whose loss, any loss term or gradient norm is NaN or infinite is skipped: no
  optimizer or scheduler step, its gradients dropped (Megatron-LM checks loss and gradients the same way;
  fp16 loss scaling skips such steps too). Each is logged with the terms that went non-finite. After
  `train.max_nonfinite_steps` in a row the run stops with `TrainingDiverged`: it is not marked finished and
  its last good checkpoint stays (a checkpoint is never written with a non-finite weight).
- **Stop signals.** SIGTERM, SIGINT and SIGUSR1 (what SLURM sends before a preemption or the time limit,
  `--signal=USR1@90`) ask the run to stop at the next step boundary. Every rank learns of a signal any rank
  got, through the same all-reduce as the non-finite verdict, so all save one checkpoint together and exit
  with `Preempted` (exit code 75); `--resume` continues exactly. A second SIGINT aborts at once.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from pipeline.errors import TinyDistillError

STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)) if s is not None)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later", what a requeue script tests for


class TrainingDiverged(TinyDistillError):
    """Too many steps in a row had a non-finite loss, loss term or gradient norm."""


class Preempted(TinyDistillError):
    """A stop signal arrived; a checkpoint was saved and the run can be resumed."""

    exit_code = PREEMPTED_EXIT_CODE
    prefix = "stopped"  # printed instead of "error"


class StopRequest:
    """Set by the first stop signal; read at step boundaries."""

    def __init__(self):
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def handle(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.signal_name is not None:
            raise KeyboardInterrupt("second SIGINT: aborted without saving")
        self.signal_name = self.signal_name or signal.Signals(signum).name


@contextmanager
def stop_signals():
    """Catch the stop signals while training (main thread only; elsewhere nothing is installed), and put
    the previous handlers back afterwards."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request.handle) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class StepVerdict:
    nonfinite: list[str]  # the terms (and "grad_norm") that were not finite on some rank; [] for a good step
    stop: bool  # some rank got a stop signal


def step_verdict(accelerator, values: dict[str, torch.Tensor], stop_requested: bool) -> StepVerdict:
    """Which of `values` (loss terms and the gradient norm) are non-finite on any rank, and whether any rank
    was asked to stop: one all-reduce (max) of a small flag vector when there are several processes."""
    names = list(values)
    flags = torch.stack([~torch.isfinite(values[name].detach().float()).all() for name in names]
                        + [torch.tensor(stop_requested, device=accelerator.device)]).float()
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    bad = flags.tolist()
    return StepVerdict([name for name, flag in zip(names, bad[:-1], strict=True) if flag > 0], bad[-1] > 0)


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """The names of parameters holding a NaN or infinity (checked before anything is saved)."""
    return [name for name, param in model.named_parameters() if not torch.isfinite(param.detach()).all()]
