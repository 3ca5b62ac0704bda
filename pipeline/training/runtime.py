"""The Accelerate runtime the training stages share: devices, optimiser, schedule, state, logs, checkpoints.

Accelerate does devices, DDP, mixed precision, gradient accumulation and `save_state`/`load_state`;
this module only composes them. One process, many GPUs or many nodes (`accelerate launch`,
`torchrun`) run the same code.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import (
    GradientAccumulationPlugin,
    is_mps_available,
    is_npu_available,
    is_xpu_available,
    set_seed,
)
from torch import nn
from tqdm.auto import tqdm

from pipeline.errors import ConfigError
from pipeline.schema import TrainConfig
from pipeline.training.checkpoints import (
    checkpoint_paths,
    finalize_checkpoint,
    read_json,
    write_json,
    write_manifest,
)
from pipeline.training.cpu_memory import retain_freed_memory
from pipeline.training.guards import TrainingDiverged, nonfinite_parameters

SIGNATURE = "run_signature.json"


def make_accelerator(train: TrainConfig, output_dir: str | Path) -> tuple[Accelerator, TrainConfig]:
    """A fresh Accelerator for one training run, and `train` with the settings as they apply.

    `mixed_precision` and `grad_accum` left unset (null) in the YAML are the launcher's
    (`accelerate launch --mixed_precision bf16`, `ACCELERATE_MIXED_PRECISION`,
    `ACCELERATE_GRADIENT_ACCUMULATION_STEPS`), else no and 1; a value the YAML sets wins.
    """
    # Accelerate keeps one AcceleratorState per process and refuses a second with another precision;
    # each run (and each step of `task`) gets its own, over the same process group (PartialState).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # Accelerate forms a multi-process CPU world (gloo) under torchrun only when told it is on CPU.
    # A plugin fixes the accumulation; without one Accelerate reads ACCELERATE_GRADIENT_ACCUMULATION_STEPS.
    accumulation = GradientAccumulationPlugin(num_steps=train.grad_accum) if train.grad_accum else None
    accelerator = Accelerator(
        cpu=not has_accelerator_device(),
        mixed_precision=train.mixed_precision,
        gradient_accumulation_plugin=accumulation,
        log_with="tensorboard" if train.tensorboard else None,
        project_dir=str(output_dir),
    )
    set_seed(train.seed, device_specific=False)
    if accelerator.device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats made CPU backward passes several times slower
        if train.cpu_retain_memory:
            retain_freed_memory()  # each step's large tensors stop page-faulting in again (2.2x at seq 512)
    effective = replace(train, mixed_precision=accelerator.mixed_precision,
                        grad_accum=accelerator.gradient_accumulation_steps)
    return accelerator, effective


def run_facts(train: TrainConfig, accelerator: Accelerator) -> dict:
    """The settings a run actually trains under, for its header in train_log.jsonl."""
    return {"processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "grad_accum": accelerator.gradient_accumulation_steps, "seed": train.seed,
            "effective_batch": train.batch_size * accelerator.num_processes * accelerator.gradient_accumulation_steps}


def process_state() -> PartialState:
    """The process group alone (rank, device, barriers), for work around the training runs."""
    return PartialState(cpu=not has_accelerator_device())


def has_accelerator_device() -> bool:
    return any(check() for check in (torch.cuda.is_available, is_xpu_available, is_npu_available, is_mps_available))


def build_optimizer(parameters: list[tuple[str, nn.Parameter]], train: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not biases or LayerNorm), as in BERT."""
    decay, no_decay = [], []
    for name, param in parameters:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.adam_betas, eps=train.adam_eps)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int):
    """Linear warmup over warmup_ratio of the steps, then linear decay to 0 (or constant)."""
    warmup = int(total_steps * train.warmup_ratio)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if train.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainState:
    """Where a run is. Saved with every checkpoint; `epoch` and `batches_in_epoch` are this rank's
    data position (ranks step in lockstep, so they agree unless shards have different lengths)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    best_metric: float | None = None  # tasks: the best dev score so far, and its step
    best_step: int = 0
    data_position: dict | None = None  # a streamed corpus's reader position (pipeline/data/corpus/stream.py)
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss, term or gradient norm, in all
    nonfinite_in_a_row: int = 0  # ... and in a row up to now (train.max_nonfinite_steps stops the run)

    def save(self, directory: Path, rank: int) -> None:
        write_json(directory / f"train_state_rank{rank}.json", asdict(self))
        if rank == 0:
            write_json(directory / "train_state.json", asdict(self))

    @classmethod
    def load(cls, directory: Path, rank: int) -> TrainState:
        own = directory / f"train_state_rank{rank}.json"
        return cls(**read_json(own if own.is_file() else directory / "train_state.json"))


def run_signature(train: TrainConfig, accelerator: Accelerator, model: nn.Module, teacher: str | None) -> dict:
    """What a checkpoint must share with the run that resumes it: the batch layout (exact resume replays the
    same batches), the model's shape and the teacher."""
    shapes = [[name, list(param.shape)] for name, param in accelerator.unwrap_model(model).named_parameters()]
    return {"batch_size": train.batch_size, "grad_accum": accelerator.gradient_accumulation_steps,
            "processes": accelerator.num_processes,
            "model_shape": hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16],
            "parameters": sum(p.numel() for p in model.parameters()), "teacher": teacher}


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: TrainState, keep: int, model: nn.Module,
                    signature: dict) -> Path:
    """All ranks write accelerate state + their data position into a temp dir; rank 0 writes the manifest
    last and renames it. Weights that are not finite are never written."""
    bad = nonfinite_parameters(accelerator.unwrap_model(model))
    if bad:
        raise TrainingDiverged(f"step {state.step}: the weights are not finite ({', '.join(bad[:3])}"
                               f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}); nothing was saved, the "
                               "last checkpoint is the last good one")
    tmp, final = checkpoint_paths(output_dir, state.step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    state.save(tmp, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / SIGNATURE, signature)
        write_manifest(tmp)
        finalize_checkpoint(tmp, final, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path, signature: dict) -> TrainState:
    """Restore a checkpoint written under the same signature; anything else is one `ConfigError` line."""
    saved_path = checkpoint / SIGNATURE
    if saved_path.is_file():
        check_signature(read_json(saved_path), signature, checkpoint)
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as err:  # noqa: BLE001  (a damaged file in a checkpoint without a manifest: one line, no traceback)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"train.resume_from: checkpoint {checkpoint} cannot be loaded "
                          f"({type(err).__name__}: {first[:200]})") from None
    return TrainState.load(checkpoint, accelerator.process_index)


def check_signature(saved: dict, current: dict, checkpoint: Path) -> None:
    """Refuse to resume under a batch layout, model or teacher other than the checkpoint's."""
    if saved.get("teacher") != current.get("teacher"):
        raise ConfigError(f"train.resume_from: checkpoint {checkpoint} was trained with the teacher "
                          f"{saved.get('teacher')}, this run has {current.get('teacher')}; a run cannot change "
                          "teacher (start again with --overwrite)")
    if saved.get("model_shape") != current.get("model_shape"):
        raise ConfigError(f"train.resume_from: checkpoint {checkpoint} holds another model shape "
                          f"({saved.get('parameters'):,} parameters, this run's model has "
                          f"{current.get('parameters'):,}); a run cannot change its model (start again with "
                          "--overwrite)")
    changed = [f"{key} {saved[key]} -> {current[key]}" for key in ("batch_size", "grad_accum", "processes")
               if key in saved and saved[key] != current[key]]
    if changed:
        raise ConfigError(f"train.resume_from: {', '.join(changed)} since checkpoint {checkpoint.name}; exact "
                          "resume replays the same batches, so it needs the same batch size, accumulation and "
                          "number of processes (restore them, or start again with --overwrite)")


class RunLog:
    """JSONL log (and TensorBoard when asked) on the main process, plus a tqdm bar with tokens/s and ETA."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, total_steps: int, start_step: int,
                 show_bar: bool, description: str):
        self.accelerator = accelerator
        self.path = output_dir / "train_log.jsonl"
        self.main = accelerator.is_main_process
        self.bar = tqdm(total=total_steps, initial=start_step, desc=description, unit="step",
                        disable=not (self.main and show_bar), dynamic_ncols=True)
        self.window_start = time.perf_counter()
        self.window_tokens = 0
        if accelerator.log_with:  # TensorBoard events under output_dir/tensorboard/
            accelerator.init_trackers("tensorboard")

    def header(self, facts: dict) -> None:
        if self.main:
            tqdm.write(" | ".join(f"{k}: {v}" for k, v in facts.items()))
            self._append({"event": "start", **facts})

    def step(self, state: TrainState, tokens: int, terms: dict[str, float] | None, lr: float) -> None:
        """Advance the bar; when `terms` is given (a logging step), write them with throughput."""
        self.window_tokens += tokens
        self.bar.update(1)
        if terms is None:
            return
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        tokens_per_s = self.window_tokens * self.accelerator.num_processes / elapsed
        self.window_start, self.window_tokens = time.perf_counter(), 0
        record = {"step": state.step, "epoch": state.epoch, "lr": lr, **terms, "tokens_per_s": round(tokens_per_s, 1)}
        if self.main:
            self.bar.set_postfix(loss=f"{terms.get('loss', float('nan')):.4f}", tok_s=f"{tokens_per_s:,.0f}")
            self._append(record)
            if self.accelerator.trackers:
                self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=state.step)

    def event(self, name: str, **fields) -> None:
        if self.main:
            self._append({"event": name, **fields})

    def warning(self, message: str) -> None:
        """One line on stderr (main process) and a `warning` event in the log."""
        if self.main:
            tqdm.write(f"warning: {message}", file=sys.stderr)
            self._append({"event": "warning", "message": message})

    def close(self) -> None:
        self.bar.close()
        if self.accelerator.trackers:
            self.accelerator.end_training()

    def _append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def mean_across_processes(accelerator: Accelerator, values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Average scalar tensors over ranks (one all-reduce) and return floats for logging."""
    if not values:
        return {}
    names = list(values)
    stacked = torch.stack([values[n].detach().float() for n in names])
    stacked = accelerator.reduce(stacked, reduction="mean")
    return {n: float(v) for n, v in zip(names, stacked.tolist())}

