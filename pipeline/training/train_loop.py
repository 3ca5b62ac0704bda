"""The one training loop every stage shares: `pretrain`, `general`, `finetune` and both steps of `task`.

`train_model` owns the optimiser, schedule, Accelerate wrapping (devices, DDP, mixed precision,
accumulation, clipping), exact resume, logging, checkpoints, dev evaluation and best-model selection.
A stage supplies what differs:
  batches_from(state)                  -> (epoch, index in epoch, batch[, reader position]) forever, from
                                          the state's data position (so a resumed run sees exactly the
                                          batches it would have); a streamed corpus adds the position
  compute_terms(model, batch, progress) -> {"loss": ..., other logged terms}; progress is the fraction of
                                          steps done, for scheduled loss weights
  evaluation                           -> optional dev scoring and best-model saving
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.schema import TrainConfig
from pipeline.tasks.data import collate, epoch_batches, predict_logits, score_predictions
from pipeline.tasks.metrics import main_metric
from pipeline.training.checkpoints import list_checkpoints, resolve_resume
from pipeline.training.guards import (
    PREEMPTED_EXIT_CODE,
    Preempted,
    StepVerdict,
    TrainingDiverged,
    step_verdict,
    stop_signals,
)
from pipeline.training.runtime import (
    RunLog,
    TrainState,
    build_optimizer,
    build_scheduler,
    load_checkpoint,
    mean_across_processes,
    run_facts,
    run_signature,
    save_checkpoint,
)

BEST_DIR = "best"


@dataclass
class Evaluation:
    """Scores a model on dev: `evaluate(unwrapped_model) -> metrics`; `metric` is the selection key."""

    evaluate: Callable[[torch.nn.Module], dict[str, float]]
    metric: str
    every: int | None = None  # steps; None: once per epoch (and always at the last step)
    save_best: Callable[[torch.nn.Module, Path], None] | None = None  # writes a model into a directory
    patience: int | None = None  # stop after this many evaluations in a row without a new best; None: never
    start_step: int = 0  # patience counts only from this step on (a warm-up, in which no new best is expected)


def out_of_patience(evaluation: Evaluation | None, state: TrainState, eval_every: int | None) -> bool:
    """True once `evaluation.patience` evaluations (every `eval_every` steps) have passed without a new
    best, counted from `evaluation.start_step` at the earliest. Read from the state alone (step and best
    step), so a resumed run stops where the original did."""
    if evaluation is None or evaluation.patience is None or state.best_metric is None:
        return False
    return state.step - max(state.best_step, evaluation.start_step) >= evaluation.patience * eval_every


def dev_evaluation(task, label_names: list[str], dev, batch_size: int, pad_id: int, device,
                   every: int | None, save_best: Callable[[torch.nn.Module, Path], None],
                   metric: str | None = None, patience: int | None = None,
                   start_step: int = 0) -> Evaluation | None:
    """Scores on the tokenised `dev` split, selecting by `metric` (default: the task's main metric);
    None when the task has no dev split. `patience`, `start_step`: see `Evaluation`."""
    if dev is None:
        return None
    return Evaluation(
        evaluate=lambda model: score_predictions(task, label_names,
                                                 predict_logits(model, dev, batch_size, pad_id, device), dev),
        metric=metric or main_metric(task.type), every=every, save_best=save_best, patience=patience,
        start_step=start_step,
    )


def planned_steps(n_rows: int, train: TrainConfig, world_size: int) -> tuple[int, int]:
    """(total optimiser steps, steps per epoch) for a dataset of n_rows."""
    batches = len(epoch_batches(n_rows, train.batch_size, 0, world_size, train.seed, 0, shuffle=False))
    per_epoch = max(1, batches // train.grad_accum)
    return (train.max_steps or per_epoch * train.epochs), per_epoch


def train_on_task_data(accelerator, model: torch.nn.Module, dataset, compute_terms, train: TrainConfig,
                       output_dir: Path, pad_id: int, description: str, header: dict,
                       evaluation: Evaluation | None = None) -> tuple[torch.nn.Module, TrainState]:
    """`train_model` over a tokenized task dataset (shuffled per epoch, sharded by rank)."""
    total_steps, per_epoch = planned_steps(len(dataset), train, accelerator.num_processes)
    lengths = [len(ids) for ids in dataset["input_ids"]] if train.group_by_length else None
    model, state, log = train_model(
        accelerator, model, lambda state: _batches_from(dataset, state, train, accelerator, pad_id, lengths),
        compute_terms,
        train, output_dir, total_steps, description, header, evaluation, eval_every=per_epoch)
    log.close()
    return model, state


def train_model(accelerator, model: torch.nn.Module, batches_from, compute_terms, train: TrainConfig,
                output_dir: Path, total_steps: int, description: str, header: dict,
                evaluation: Evaluation | None = None, eval_every: int | None = None):
    """Train `model` for `total_steps` optimiser steps; returns (the unwrapped model, the final state, the
    still-open log, for the caller's closing events).

    With `evaluation`, the model is scored on dev every `evaluation.every` (else `eval_every`) steps and
    at the end; the best one is written to `output_dir/best` by `evaluation.save_best` on the main process.
    With `evaluation.patience`, training stops early (an `early_stop` event in the log, a checkpoint at
    that step) once that many evaluations in a row bring no new best; `total_steps` is then the cap.
    """
    # One accelerator runs both steps of `task`; each step's checkpoints must hold only its own
    # model, optimiser and schedule, or resuming step 2 would load step 1's objects into them.
    accelerator.free_memory()
    accelerator._custom_objects.clear()
    optimizer = build_optimizer(list(model.named_parameters()), train)
    scheduler = build_scheduler(optimizer, train, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    signature = run_signature(train, accelerator, model, header.get("teacher"))
    resume, damaged = resolve_resume(output_dir, train.resume_from)
    state = load_checkpoint(accelerator, resume, signature) if resume else TrainState()
    eval_every = (evaluation.every or eval_every or total_steps) if evaluation else None

    log = RunLog(accelerator, output_dir, total_steps, state.step, train.progress_bar, description)
    for warning in damaged:
        log.warning(warning)
    log.header({**header, **run_facts(train, accelerator), "steps": total_steps,
                "resumed_from": str(resume) if resume else None})
    batches = batches_from(state)
    with stop_signals() as stop:
        while state.step < total_steps and not out_of_patience(evaluation, state, eval_every):
            model.train()
            sums: dict[str, torch.Tensor] = {}
            tokens = 0
            for _ in range(train.grad_accum):
                epoch, index, batch, *position = next(batches)
                state.epoch, state.batches_in_epoch = epoch, index + 1
                if position:
                    state.data_position = position[0]
                tokens += int(batch["attention_mask"].sum())  # on the host: no device sync per micro-batch
                batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
                with accelerator.accumulate(model):
                    terms = compute_terms(model, batch, state.step / total_steps)
                    accelerator.backward(terms["loss"])
                    for name, value in terms.items():
                        sums[name] = sums.get(name, 0.0) + value.detach().float() / train.grad_accum
                    if accelerator.sync_gradients:
                        verdict = step_verdict(accelerator, {**sums, "grad_norm": _grad_norm(accelerator, model, train)},
                                               stop.requested)
                        if not verdict.nonfinite:
                            optimizer.step()
                        elif accelerator.scaler is not None:
                            accelerator.scaler.update()  # fp16: the scaler saw the overflow and lowers its scale
                    optimizer.zero_grad()
                state.samples_seen += batch["input_ids"].shape[0] * accelerator.num_processes
            lr = scheduler.get_last_lr()[0]
            if verdict.nonfinite:
                _skip_step(state, verdict, train, log, output_dir)
            else:
                scheduler.step()
                state.nonfinite_in_a_row = 0
            state.step += 1
            state.tokens_seen += tokens * accelerator.num_processes
            is_log_step = state.step % train.log_every == 0 or state.step == total_steps
            log.step(state, tokens, mean_across_processes(accelerator, sums) if is_log_step else None, lr)
            if evaluation and (state.step % eval_every == 0 or state.step == total_steps):
                _evaluate(accelerator, model, evaluation, state, output_dir, log)
            stopping = state.step < total_steps and out_of_patience(evaluation, state, eval_every)
            if state.step % train.save_every == 0 or state.step == total_steps or stopping or verdict.stop:
                saved = save_checkpoint(accelerator, output_dir, state, train.keep_checkpoints, model, signature)
            if stopping:
                log.event("early_stop", step=state.step, best_step=state.best_step, best=state.best_metric,
                          patience=evaluation.patience, start_step=evaluation.start_step)
            if verdict.stop and state.step < total_steps:
                log.event("preempted", step=state.step, signal=stop.signal_name or "another rank's", checkpoint=str(saved))
                log.close()
                raise Preempted(f"{stop.signal_name or 'a signal to another rank'} at step {state.step}: checkpoint "
                                f"{saved} saved; continue with --resume (exit code {PREEMPTED_EXIT_CODE})")
    return accelerator.unwrap_model(model), state, log


def _grad_norm(accelerator, model, train: TrainConfig) -> torch.Tensor:
    """The gradient norm after clipping to `train.max_grad_norm` (unclipped when it is unset)."""
    if train.max_grad_norm:
        return accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
    accelerator.unscale_gradients()
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def _skip_step(state: TrainState, verdict: StepVerdict, train: TrainConfig, log: RunLog, output_dir: Path) -> None:
    """Count a skipped non-finite step; stop the run after `train.max_nonfinite_steps` in a row."""
    state.nonfinite_steps += 1
    state.nonfinite_in_a_row += 1
    step = state.step + 1
    log.event("nonfinite", step=step, terms=verdict.nonfinite, in_a_row=state.nonfinite_in_a_row,
              total=state.nonfinite_steps)
    if state.nonfinite_in_a_row >= train.max_nonfinite_steps:
        last = list_checkpoints(output_dir)
        log.close()
        raise TrainingDiverged(
            f"step {step}: {state.nonfinite_in_a_row} steps in a row with non-finite values "
            f"({', '.join(verdict.nonfinite)}), train.max_nonfinite_steps is {train.max_nonfinite_steps}; stopped. "
            f"The last good checkpoint is {last[-1] if last else 'none (no checkpoint was saved yet)'}; "
            "lower train.lr or look at the data near this step")


def _evaluate(accelerator, model, evaluation: Evaluation, state: TrainState, output_dir: Path, log: RunLog) -> None:
    """Score on dev (main process), keep the best model, and share the score with every rank."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    score = torch.zeros(1, dtype=torch.float64, device=accelerator.device)  # float64: exact ties stay ties
    if accelerator.is_main_process:
        metrics = evaluation.evaluate(unwrapped)
        score[0] = metrics[evaluation.metric]
        improved = state.best_metric is None or metrics[evaluation.metric] > state.best_metric
        log.event("dev", step=state.step, **{f"dev_{k}": v for k, v in metrics.items()}, best=improved)
        if improved and evaluation.save_best:
            _write_best(evaluation.save_best, unwrapped, output_dir / BEST_DIR)
    score = accelerator.reduce(score, reduction="sum")  # only rank 0 contributed
    value = float(score[0])
    if state.best_metric is None or value > state.best_metric:
        state.best_metric, state.best_step = value, state.step
    model.train()
    accelerator.wait_for_everyone()


def _write_best(save: Callable, model: torch.nn.Module, target: Path) -> None:
    temp = target.with_name(f".{target.name}.tmp")
    if temp.exists():
        shutil.rmtree(temp)
    save(model, temp)
    if target.exists():
        shutil.rmtree(target)
    temp.rename(target)


def _batches_from(dataset, state: TrainState, train: TrainConfig, accelerator, pad_id: int,
                  lengths: list[int] | None = None) -> Iterator:
    """(epoch, index in epoch, batch) forever from the state's data position (exact resume);
    `lengths` groups rows of similar length into batches."""
    epoch, skip = state.epoch, state.batches_in_epoch
    while True:
        plan = epoch_batches(len(dataset), train.batch_size, accelerator.process_index,
                             accelerator.num_processes, train.seed, epoch, lengths=lengths)
        for index in range(skip, len(plan)):
            yield epoch, index, collate(dataset.select(plan[index]).to_list(), pad_id)
        epoch, skip = epoch + 1, 0
