"""Stage two: task-specific distillation from a fine-tuned teacher (TinyBERT section 3.3).

    tinydistill task configs/task_tnews_zh.yaml [key=value ...] [--resume] [--overwrite]

Step 1 (intermediate): stage one's embedding, hidden and attention losses on the transfer set.
Step 2 (prediction): soft cross-entropy (or logits MSE) against the teacher's logits, optionally plus
gold-label CE; the teacher's logits come from an on-disk cache, so step 2 runs no teacher forward.
With `ensemble_teachers`, step 2 learns from the average of several fine-tuned teachers (MT-DNN style,
`prediction.loss.ensemble`), each teacher's logits cached separately. The best student on dev is the result.

Extractive QA (`task.type: qa`) distils on question + context windows: step 1 as above, step 2 the soft
CE over each window's [CLS] and context positions, for the start and for the end; the cache holds each
window's start and end logits.

Output (`output_dir`): the student in `save_pretrained` format (AutoModelForSequenceClassification /
AutoModelForTokenClassification / AutoModelForQuestionAnswering, label map included) with the tokenizer and `metrics.json`;
`intermediate/` and `prediction/` hold each step's log, checkpoints and result; `tinydistill_run.json`
is written last.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from pipeline.config import write_resolved_config
from pipeline.data.prune_vocab import (
    VocabMap,
    count_token_ids,
    describe,
    id_lookup,
    save_tokenizer,
    student_batch,
    student_vocabulary,
)
from pipeline.distill.capture import capture_attention_scores
from pipeline.distill.intermediate import (
    StudentWithProjections,
    freeze_unreached,
    hidden_projection_layers,
    intermediate_layer_map,
    intermediate_loss_terms,
    probe_batch,
    scored_layers,
    teacher_features,
)
from pipeline.distill.prediction import PredictionLossConfig, prediction_terms
from pipeline.distill.projections import Projections, build_projections
from pipeline.errors import ConfigError, ModelError
from pipeline.models.architectures import architecture_of
from pipeline.models.loading import (
    build_student,
    check_teacher_student_fit,
    count_parameters,
    forward_input_names,
    load_model_config,
    load_pretrained,
    load_teacher,
    load_tokenizer,
    parameter_count,
    teacher_identity,
)
from pipeline.schema import IntermediateLossConfig, MappingConfig, StudentConfig, TrainConfig
from pipeline.tasks.data import (
    TaskConfig,
    check_label_map,
    check_seq_len,
    label_maps,
    label_names_from,
    label_permutation,
    load_task_split,
    load_transfer,
    model_class_for,
    score_splits,
    task_logits,
    tokenize_splits,
    tokenize_task,
)
from pipeline.training.checkpoints import FINISHED_MARKER, mark_finished, prepare_output_dir, write_json
from pipeline.training.logits_cache import DEFAULT_CACHE_DIR, with_teacher_logits
from pipeline.training.runtime import make_accelerator, process_state
from pipeline.training.train_loop import BEST_DIR, dev_evaluation, train_on_task_data

INTERMEDIATE_DIR, PREDICTION_DIR = "intermediate", "prediction"


@dataclass(frozen=True)
class IntermediateStepConfig:
    """Step 1. TinyBERT: 10-20 epochs on the augmented set, lr 5e-5, constant (schedule: constant,
    warmup_ratio: 0)."""

    enabled: bool = True  # run step 1 (false: go straight to step 2)
    # weights and forms of the intermediate terms
    loss: IntermediateLossConfig = field(default_factory=IntermediateLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and runtime of step 1


@dataclass(frozen=True)
class PredictionStepConfig:
    """Step 2. TinyBERT: 3 epochs, lr from {1e-5, 2e-5, 3e-5}, warmup 0.1 then linear decay."""

    enabled: bool = True  # run step 2
    # the soft (and optional hard) prediction loss
    loss: PredictionLossConfig = field(default_factory=PredictionLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and runtime of step 2
    eval_every: int | None = None  # steps between dev evaluations; default once per epoch
    # compute the teacher's logits once per transfer set (false: live, every step)
    cache_teacher_logits: bool = True


@dataclass(frozen=True)
class TaskDistillConfig:
    """`transfer`: the transfer set (a `tinydistill augment` output folder, or any file with the task's
    columns); default: the task's train split. `cache_dir`: where teacher logits are kept across runs.

    `ensemble_teachers`: more fine-tuned teachers for step 2, besides `teacher` (which alone serves
    step 1's intermediate losses). Step 2's soft target is the average over all of them (see
    `prediction.loss.ensemble`; regression averages their predictions, token tasks do it per token).
    Every teacher must read the same token ids as `teacher` and carry the same label names; the student
    uses `teacher`'s label order, and a teacher that orders the same names differently has its logits
    permuted into that order. Names that disagree are refused.
    """

    teacher: str  # the fine-tuned teacher (a finetune output)
    task: TaskConfig  # what the task is and where its data lives
    output_dir: str  # where the student and both steps' logs and checkpoints go
    # how the student is made; init: checkpoint takes a stage-one student
    student: StudentConfig = field(default_factory=StudentConfig)
    ensemble_teachers: list[str] | None = None  # more fine-tuned teachers whose soft targets step 2 averages
    # the transfer set (an augment output or a file with the task's columns; null: the train split)
    transfer: str | None = None
    # which teacher layer each student layer learns from in step 1
    mapping: MappingConfig = field(default_factory=MappingConfig)
    # step 1: the intermediate-layer losses
    intermediate: IntermediateStepConfig = field(default_factory=IntermediateStepConfig)
    # step 2: the prediction-layer loss
    prediction: PredictionStepConfig = field(default_factory=PredictionStepConfig)
    # where teacher logits are kept across runs (keyed by teacher, data and settings)
    cache_dir: str = str(DEFAULT_CACHE_DIR)
    eval_batch_size: int = 64  # batch size of dev and test scoring
    resume_from: str | None = None  # auto or a checkpoint folder (--resume)
    overwrite: bool = False  # replace a finished output_dir (--overwrite)

    def __post_init__(self):
        if not self.intermediate.enabled and not self.prediction.enabled:
            raise ConfigError("intermediate.enabled and prediction.enabled are both false: nothing to do")


def run_task(cfg: TaskDistillConfig) -> Path:
    """Distil the fine-tuned `cfg.teacher` into a student for `cfg.task`; returns the output directory."""
    # The run itself only needs the process group; each step trains under its own Accelerator, built
    # from its own train section (precision, accumulation, seed, teacher dtype).
    accelerator = process_state()
    set_seed((cfg.intermediate.train if cfg.intermediate.enabled else cfg.prediction.train).seed,
             device_specific=False)  # the student's random init: the seed of the step that first trains it
    # Inputs are checked before anything is written: models, label maps, columns, sequence lengths.
    teacher_config = load_model_config(cfg.teacher, "teacher")
    if cfg.intermediate.enabled:  # layer-wise losses need an architecture tried that way
        architecture_of(teacher_config, "teacher")
    tokenizer = load_tokenizer(cfg.teacher, "teacher tokenizer")
    task = cfg.task
    raw_train = load_task_split(task, "train")
    label_names = check_label_map(teacher_config, label_names_from(task, raw_train), "teacher",
                                  task_type=task.type)
    raw_transfer = (load_transfer(task, cfg.transfer, need_labels=cfg.prediction.loss.needs_labels)
                    if cfg.transfer else raw_train)
    check_seq_len(task, teacher_config)
    label_orders = _check_ensemble_teachers(cfg, tokenizer, label_names)
    student_model_class = model_class_for(task.type)
    student = build_student(cfg.student, teacher_config, cfg.teacher, model_class=student_model_class,
                            **label_maps(label_names, task.type))
    if cfg.intermediate.enabled:
        architecture_of(student.config, "student")
    needs_labels = cfg.prediction.enabled and cfg.prediction.loss.needs_labels
    transfer = tokenize_task(raw_transfer, tokenizer, task, label_names, "transfer", need_labels=needs_labels)
    # The teacher reads the transfer set as tokenised here; the student reads it through vocab_map, and
    # dev and test with its own tokenizer, as it will be used.
    vocab_map, student_tokenizer = student_vocabulary(
        cfg.student, tokenizer, cfg.teacher, teacher_config.vocab_size, student,
        lambda: (count_token_ids(transfer["input_ids"], teacher_config.vocab_size), _sample_texts(task, raw_transfer)))
    check_teacher_student_fit(teacher_config, student.config, cfg.intermediate.loss.attention,
                              cfg.intermediate.loss.attention_heads, task.max_seq_len, vocab_map)
    layer_map = intermediate_layer_map(cfg.mapping, cfg.intermediate.loss, teacher_config.num_hidden_layers,
                                       student.config.num_hidden_layers)
    data = tokenize_splits(task, student_tokenizer, label_names, {
        "dev": load_task_split(task, "dev") if task.dev else None,
        "test": load_task_split(task, "test") if task.test else None,
    })

    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        _prepare(output_dir, cfg)
        write_resolved_config(cfg, output_dir)
    accelerator.wait_for_everyone()
    pad_id = student_tokenizer.pad_token_id
    vocab = StudentVocab(tokenizer, student_tokenizer, vocab_map)

    if cfg.intermediate.enabled:
        step_dir = output_dir / INTERMEDIATE_DIR
        if not (step_dir / FINISHED_MARKER).is_file():
            _intermediate_step(cfg, student, layer_map, transfer, step_dir, vocab)
        student = load_pretrained(student_model_class, str(step_dir), "step-1 student", dtype=torch.float32)

    if cfg.prediction.enabled:
        step_dir = output_dir / PREDICTION_DIR
        if not (step_dir / FINISHED_MARKER).is_file():
            _prediction_step(cfg, student, transfer, data, label_names, label_orders, step_dir, vocab)
        student = load_pretrained(student_model_class, str(step_dir), "step-2 student", dtype=torch.float32)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        student.save_pretrained(output_dir)
        save_tokenizer(student_tokenizer, output_dir)
        metrics = score_splits(task, label_names, student.to(accelerator.device), data, cfg.eval_batch_size, pad_id,
                               accelerator.device)
        write_json(output_dir / "metrics.json", metrics)
        mark_finished(output_dir, {"stage": "task", "student_params": count_parameters(student),
                                   "teacher_params": parameter_count(teacher_config, student_model_class),
                                   **describe(vocab_map, teacher_config.vocab_size), **metrics})
    accelerator.wait_for_everyone()
    return output_dir


@dataclass(frozen=True)
class StudentVocab:
    """The teacher's tokenizer (the transfer set's ids), the student's, and the map between them (None:
    the student reads the teacher's ids)."""

    teacher_tokenizer: object
    student_tokenizer: object
    vocab_map: VocabMap | None

    def lookup(self, device) -> torch.Tensor | None:
        return id_lookup(self.vocab_map, device)


def _sample_texts(task: TaskConfig, raw, n: int = 200) -> list[str]:
    """A few transfer texts, to check a pruned tokenizer against the teacher's."""
    rows = raw.select(range(min(n, len(raw))))
    if task.type == "token":
        return [" ".join(words) for words in rows[task.tokens]]
    if task.type == "qa":
        return [f"{question} {context}" for question, context in zip(rows[task.question], rows[task.context])]
    return list(rows[task.text])


def _intermediate_step(cfg: TaskDistillConfig, student, layer_map, transfer, step_dir: Path,
                       vocab: StudentVocab) -> None:
    accelerator, train = make_accelerator(_with_resume(cfg.intermediate.train, cfg.resume_from), step_dir)
    if accelerator.is_main_process:
        prepare_output_dir(step_dir, False, train.resume_from)
    accelerator.wait_for_everyone()
    teacher = load_teacher(cfg.teacher, train.teacher_dtype, model_class_for(cfg.task.type)).to(accelerator.device)
    previous = Projections.load(cfg.student.checkpoint) if cfg.student.init == "checkpoint" else None
    projections = build_projections(student.config.hidden_size, teacher.config.hidden_size,
                                    hidden_projection_layers(layer_map, cfg.intermediate.loss),
                                    cfg.intermediate.loss.projection, previous)
    model = StudentWithProjections(student, projections).to(accelerator.device)
    header = {"step": "1/2 intermediate", "teacher": teacher_identity(cfg.teacher), "teacher_dtype": train.teacher_dtype,
              "mapping (student->teacher)": layer_map.describe(),
              "transfer_rows": len(transfer), "student_params": count_parameters(student),
              **describe(vocab.vocab_map, teacher.config.vocab_size)}
    tokenizer, lookup = vocab.teacher_tokenizer, vocab.lookup(accelerator.device)
    teacher_layers, student_layers = scored_layers(layer_map, cfg.intermediate.loss)
    with capture_attention_scores(teacher, teacher_layers) as teacher_captured, \
            capture_attention_scores(student, student_layers) as student_captured:

        def compute_terms(model, batch, progress):
            teacher_hidden, teacher_scores = teacher_features(teacher, batch, teacher_captured)
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            projected = model(**student_batch(inputs, lookup))
            return intermediate_loss_terms(projected, dict(student_captured), teacher_hidden, teacher_scores,
                                           layer_map, cfg.intermediate.loss, batch["attention_mask"])

        probe = probe_batch(tokenizer, accelerator.device)
        frozen = freeze_unreached(model, lambda model: compute_terms(model, probe, 0.0)["loss"])
        header["frozen_params"] = sum(p.numel() for n, p in model.named_parameters() if n in frozen)
        model, state = train_on_task_data(accelerator, model, transfer, compute_terms, train, step_dir,
                                          tokenizer.pad_token_id, "task distillation 1/2 (intermediate)", header)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.student.requires_grad_(True)
        model.student.save_pretrained(step_dir)
        save_tokenizer(vocab.student_tokenizer, step_dir)
        model.projections.save(step_dir)
        mark_finished(step_dir, {"stage": "task/intermediate", "steps": state.step})
    accelerator.wait_for_everyone()


def _check_ensemble_teachers(cfg: TaskDistillConfig, tokenizer, label_names: list[str] | None) -> list:
    """For each of `teacher` and `ensemble_teachers`: the permutation that puts its logits into the
    first teacher's label order (None: already in it). Refuses teachers that read other token ids or
    name other labels, before anything is loaded or written."""
    orders = [None]
    for index, source in enumerate(cfg.ensemble_teachers or []):
        role = f"ensemble_teachers[{index}]"
        config = load_model_config(source, role)
        names = check_label_map(config, label_names, role, against="the first teacher's labels",
                                task_type=cfg.task.type)
        check_seq_len(cfg.task, config)
        if load_tokenizer(source, f"{role} tokenizer").get_vocab() != tokenizer.get_vocab():
            raise ModelError(f"{role}: {source} has another vocabulary than the teacher {cfg.teacher}; "
                             "every teacher must read the same token ids")
        orders.append(label_permutation(names, label_names))
    return orders


def _prediction_step(cfg: TaskDistillConfig, student, transfer, data, label_names, label_orders: list,
                     step_dir: Path, vocab: StudentVocab) -> None:
    step = cfg.prediction
    accelerator, train = make_accelerator(_with_resume(step.train, cfg.resume_from), step_dir)
    if accelerator.is_main_process:
        prepare_output_dir(step_dir, False, train.resume_from)
    accelerator.wait_for_everyone()
    pad_id = vocab.teacher_tokenizer.pad_token_id  # of the transfer set, which the teachers read
    student_pad_id = vocab.student_tokenizer.pad_token_id  # of dev and test, which only the student reads
    lookup = vocab.lookup(accelerator.device)
    task_type = cfg.task.type
    sources = [cfg.teacher, *(cfg.ensemble_teachers or [])]
    columns = [f"teacher_logits_{k}" for k in range(len(sources))]
    live_teachers = []
    for k, source in enumerate(sources):  # extra teachers are loaded one at a time when cached
        member = load_teacher(source, train.teacher_dtype, model_class_for(task_type))
        if step.cache_teacher_logits:
            transfer, _ = with_teacher_logits(accelerator, transfer, member.to(accelerator.device), source,
                                              cfg.cache_dir, cfg.eval_batch_size, pad_id, log=tqdm.write,
                                              column=columns[k])
        else:
            live_teachers.append(member.to(accelerator.device))
    student.requires_grad_(True)
    student_inputs = forward_input_names(student)

    def teacher_logits(batch, inputs) -> list[torch.Tensor]:
        """Every teacher's logits for the batch, in the first teacher's label order."""
        if live_teachers:
            with torch.no_grad():
                logits = [task_logits(member(**inputs)).float() for member in live_teachers]
        else:
            logits = [batch[column] for column in columns]
        return [z if order is None else z[..., order] for z, order in zip(logits, label_orders)]

    def compute_terms(model, batch, progress):
        inputs = {k: batch[k] for k in student_inputs}
        student_logits = task_logits(model(**student_batch(inputs, lookup)))
        mask = batch["position_mask"] if task_type == "qa" else batch["attention_mask"]  # qa: [CLS] and context
        return prediction_terms(student_logits, teacher_logits(batch, inputs), batch.get("labels"), task_type,
                                step.loss, progress, mask)

    def save_model(model, directory: Path) -> None:
        model.save_pretrained(directory)
        save_tokenizer(vocab.student_tokenizer, directory)

    evaluation = dev_evaluation(cfg.task, label_names, data["dev"], cfg.eval_batch_size, student_pad_id,
                                accelerator.device, step.eval_every, save_model)
    header = {"step": "2/2 prediction", "teacher": teacher_identity(*sources), "teacher_dtype": train.teacher_dtype, "loss": step.loss.kind if task_type != "regression" else "mse",
              "temperature": step.loss.temperature, "teacher_logits": "live" if live_teachers else "cached",
              "teachers": len(sources), "transfer_rows": len(transfer)}
    if len(sources) > 1:
        header["ensemble"] = step.loss.ensemble
    model, state = train_on_task_data(accelerator, student, transfer, compute_terms, train, step_dir, pad_id,
                                      "task distillation 2/2 (prediction)", header, evaluation)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = model
        if evaluation is not None:
            final = load_pretrained(type(model), str(step_dir / BEST_DIR), "best student", dtype=torch.float32)
        save_model(final, step_dir)
        mark_finished(step_dir, {"stage": "task/prediction", "steps": state.step, "best_step": state.best_step,
                                 "best_dev": state.best_metric})
    accelerator.wait_for_everyone()


def _with_resume(train: TrainConfig, resume_from: str | None) -> TrainConfig:
    return train if train.resume_from is not None or resume_from is None else replace(train, resume_from=resume_from)


def _prepare(output_dir: Path, cfg: TaskDistillConfig) -> None:
    """The run directory: refuse to clobber finished or unfinished runs unless asked."""
    started = any((output_dir / step).exists() for step in (INTERMEDIATE_DIR, PREDICTION_DIR))
    finished = (output_dir / FINISHED_MARKER).is_file()
    if started and not finished and cfg.resume_from is None and not cfg.overwrite:
        raise ConfigError(
            f"output_dir: {output_dir} holds an unfinished task distillation; pass --resume to continue it "
            "or --overwrite to start again"
        )
    prepare_output_dir(output_dir, cfg.overwrite, cfg.resume_from)
