"""Distil a fine-tuned teacher into a BiLSTM (Tang et al. 2019) instead of a small BERT.

    tinydistill bilstm configs/bilstm_reviews_zh.yaml [key=value ...] [--resume] [--overwrite]

The student's vocabulary (characters or jieba words) is built from the transfer set and the train split;
with `vectors`, its embeddings start from gensim word vectors. The loss is Tang's logits MSE against the
teacher's logits, which come from the same on-disk cache as `tinydistill task` (the teacher runs over the
transfer set with its own tokenizer once; later runs over the same set and teacher reuse the logits).
The best student on dev is the result. Classification only (one sentence or a pair): token and regression
tasks are refused at start-up.

Output (`output_dir`): the student in `pipeline.models.bilstm`'s format (`bilstm_config.json`, `model.safetensors`,
`vocab.txt`), `metrics.json`, `train_log.jsonl`, `checkpoints/`, `best/`; `tinydistill_run.json` last.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import datasets
from tqdm.auto import tqdm

from pipeline.config import write_resolved_config
from pipeline.distill.losses import logits_mse
from pipeline.errors import ConfigError, DataError
from pipeline.models.bilstm import (
    BiLSTMClassifier,
    BiLSTMModelConfig,
    BiLSTMVocab,
    load_bilstm,
    pretrained_embeddings,
    save_bilstm,
)
from pipeline.models.loading import (
    count_parameters,
    load_model_config,
    load_teacher,
    load_tokenizer,
    teacher_identity,
)
from pipeline.schema import TrainConfig
from pipeline.tasks.data import (
    TaskConfig,
    check_label_map,
    check_seq_len,
    label_maps,
    label_names_from,
    load_task_split,
    load_transfer,
    model_class_for,
    score_splits,
    tokenize_splits,
    tokenize_task,
)
from pipeline.training.checkpoints import mark_finished, prepare_output_dir, write_json
from pipeline.training.logits_cache import DEFAULT_CACHE_DIR, with_teacher_logits
from pipeline.training.runtime import make_accelerator
from pipeline.training.train_loop import BEST_DIR, dev_evaluation, train_on_task_data


@dataclass(frozen=True)
class BiLSTMConfig:
    """`transfer`: a `tinydistill augment` output folder or a file with the task's columns (default: the
    train split). `unit`: `char` or `word` (jieba). `vectors`: word vectors to start the embeddings from
    (word2vec text/binary, GloVe, gensim `.kv`; their dimension must equal `embedding_dim`).
    Tang et al.: 300-d word2vec, a 300-unit BiLSTM, a 400-unit ReLU layer."""

    teacher: str  # the fine-tuned teacher
    task: TaskConfig  # what the task is and where its data lives
    output_dir: str  # where the BiLSTM student, logs and checkpoints go
    transfer: str | None = None  # the transfer set (null: the train split)
    unit: Literal["char", "word"] = "char"  # char or word (jieba) tokens
    # word vectors to start the embeddings from (their size must equal embedding_dim)
    vectors: str | None = None
    vocab_min_count: int = 1  # keep units seen at least this often in the transfer set
    vocab_max_size: int | None = None  # keep at most this many units (null: all)
    embedding_dim: int = 300  # embedding size
    hidden_size: int = 300  # LSTM units per direction
    mlp_hidden: int = 400  # units of the ReLU layer before the output
    dropout: float = 0.1  # dropout on embeddings and the MLP
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and runtime
    eval_every: int | None = None  # steps between dev evaluations; default once per epoch
    eval_batch_size: int = 64  # batch size of dev and test scoring
    cache_dir: str = str(DEFAULT_CACHE_DIR)  # where teacher logits are kept across runs
    resume_from: str | None = None  # auto or a checkpoint folder (--resume)
    overwrite: bool = False  # replace a finished output_dir (--overwrite)

    def __post_init__(self):
        if self.task.type != "classification":
            raise ConfigError(f"task.type: the BiLSTM student does classification only (one sentence or a pair), "
                              f"not {self.task.type}")
        for key in ("embedding_dim", "hidden_size", "mlp_hidden", "vocab_min_count"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")


def run_bilstm(cfg: BiLSTMConfig) -> Path:
    """Distil the fine-tuned `cfg.teacher` into a BiLSTM for `cfg.task`; returns the output directory."""
    train = cfg.train if cfg.resume_from is None else replace(cfg.train, resume_from=cfg.resume_from)
    accelerator, train = make_accelerator(train, cfg.output_dir)
    # Inputs are checked before anything is written: teacher, label map, columns, vectors.
    task = cfg.task
    teacher_config = load_model_config(cfg.teacher, "teacher")
    tokenizer = load_tokenizer(cfg.teacher, "teacher tokenizer")
    check_seq_len(task, teacher_config)
    raw_train = load_task_split(task, "train")
    label_names = check_label_map(teacher_config, label_names_from(task, raw_train), "teacher")
    raw_transfer = load_transfer(task, cfg.transfer) if cfg.transfer else raw_train
    vocab = BiLSTMVocab.build(_texts(task, raw_transfer, raw_train if cfg.transfer else None), cfg.unit,
                              cfg.vocab_min_count, cfg.vocab_max_size)
    embeddings, coverage = _embeddings(cfg, vocab)
    model = BiLSTMClassifier(BiLSTMModelConfig(
        vocab_size=len(vocab), unit=cfg.unit, pair=task.text_pair is not None, embedding_dim=cfg.embedding_dim,
        hidden_size=cfg.hidden_size, mlp_hidden=cfg.mlp_hidden, dropout=cfg.dropout, max_len=task.max_seq_len,
        **{k: v for k, v in label_maps(label_names).items() if k in ("num_labels", "id2label", "label2id")},
    ), embeddings)
    teacher_rows = tokenize_task(raw_transfer, tokenizer, task, label_names, "transfer", need_labels=False)
    transfer = tokenize_task(raw_transfer, vocab, task, label_names, "transfer", need_labels=False)
    data = tokenize_splits(task, vocab, label_names, {
        "dev": load_task_split(task, "dev") if task.dev else None,
        "test": load_task_split(task, "test") if task.test else None,
    })

    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, cfg.overwrite, train.resume_from)
        write_resolved_config(cfg, output_dir)
    accelerator.wait_for_everyone()
    teacher = load_teacher(cfg.teacher, train.teacher_dtype, model_class_for(task.type)).to(accelerator.device)
    teacher_rows, _ = with_teacher_logits(accelerator, teacher_rows, teacher, cfg.teacher, cfg.cache_dir,
                                          cfg.eval_batch_size, tokenizer.pad_token_id, log=tqdm.write)
    # Both tokenisations map the same raw rows in order, so row i of each is example i.
    transfer = datasets.concatenate_datasets([transfer, teacher_rows.select_columns(["teacher_logits"])], axis=1)

    def compute_terms(model, batch, progress):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).logits
        loss = logits_mse(logits, batch["teacher_logits"])
        return {"loss": loss, "logits_mse": loss.detach()}

    def save_model(model, directory: Path) -> None:
        save_bilstm(model, vocab, directory)

    evaluation = dev_evaluation(task, label_names, data["dev"], cfg.eval_batch_size, vocab.pad_token_id,
                                accelerator.device, cfg.eval_every, save_model)
    header = {"student": "bilstm", "teacher": teacher_identity(cfg.teacher), "unit": cfg.unit, "vocab": len(vocab), "vectors_coverage": coverage,
              "pair": model.config.pair, "loss": "logits_mse", "transfer_rows": len(transfer),
              "student_params": count_parameters(model)}
    model, state = train_on_task_data(accelerator, model, transfer, compute_terms, train, output_dir,
                                      vocab.pad_token_id, "BiLSTM distillation", header, evaluation)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = load_bilstm(output_dir / BEST_DIR)[0] if evaluation is not None else model.eval()
        save_model(final, output_dir)
        metrics = score_splits(task, label_names, final.to(accelerator.device), data, cfg.eval_batch_size,
                               vocab.pad_token_id, accelerator.device)
        write_json(output_dir / "metrics.json", {"best_step": state.best_step, **metrics})
        mark_finished(output_dir, {"stage": "bilstm", "steps": state.step, "student_params": count_parameters(final),
                                   "teacher_params": count_parameters(teacher), **metrics})
    accelerator.wait_for_everyone()
    return output_dir


def _texts(task: TaskConfig, *splits) -> list[str]:
    """Every sentence of the given raw splits (both sides of a pair), for the vocabulary."""
    columns = [c for c in (task.text, task.text_pair) if c]
    return [str(text) for split in splits if split is not None for column in columns for text in split[column]]


def _embeddings(cfg: BiLSTMConfig, vocab: BiLSTMVocab):
    """(matrix, coverage) from `cfg.vectors`, or (None, None) for a random start."""
    if cfg.vectors is None:
        return None, None
    from augment.vectors import load_word_vectors

    try:
        vectors = load_word_vectors(cfg.vectors)
    except DataError as err:  # name this config's key, not the augment config's
        raise DataError(str(err).replace("candidates.vectors.path: ", "vectors: ")) from None
    if vectors.vector_size != cfg.embedding_dim:
        raise ConfigError(f"embedding_dim: {cfg.embedding_dim}, but the vectors in {cfg.vectors} have "
                          f"{vectors.vector_size} dimensions")
    return pretrained_embeddings(vocab, vectors, cfg.embedding_dim, cfg.train.seed)
