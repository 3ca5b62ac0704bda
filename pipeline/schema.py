"""Config sections shared by the training stages. Defaults live here; presets live in configs/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.errors import ConfigError

STUDENT_PRESETS = {
    # TinyBERT-4 (Jiao et al. 2020): 4 layers, hidden 312, FFN 1200, 12 heads (head dim 26).
    "tinybert4": {"num_hidden_layers": 4, "hidden_size": 312, "intermediate_size": 1200, "num_attention_heads": 12},
    "tinybert6": {"num_hidden_layers": 6, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
}


@dataclass(frozen=True)
class StudentConfig:
    """How the student is made.

    init: `config` (a fresh model: a preset and/or explicit sizes, the teacher's vocabulary),
    `teacher_layers` (copy the teacher's embeddings and some of its layers, DistilBERT style),
    `checkpoint` (an earlier tinydistill student, or any saved BERT-like model).
    vocab: `full` (the teacher's vocabulary, or a checkpoint's own) or `prune` (keep the tokens of the text
    the student trains on, and of `vocab_texts` if given, that occur at least `vocab_min_count` times, plus
    the special tokens; see pipeline/data/prune_vocab.py). `vocab_texts`: more text to count, read as a
    corpus.path is (files, folders, globs; JSONL/CSV with a `text` column), e.g. the task's train split in
    stage one, so that a student pruned there still knows the task's tokens.
    """

    # config (fresh), teacher_layers (copied from the teacher) or checkpoint (a saved model)
    init: Literal["config", "teacher_layers", "checkpoint"] = "config"
    # tinybert4 (4L-312) or tinybert6 (6L-768) sizes; explicit sizes override it
    preset: Literal["tinybert4", "tinybert6"] | None = "tinybert4"
    num_hidden_layers: int | None = None  # layers (overrides the preset)
    hidden_size: int | None = None  # hidden width (overrides the preset)
    intermediate_size: int | None = None  # FFN width (overrides the preset)
    num_attention_heads: int | None = None  # attention heads (overrides the preset)
    dropout: float | None = None  # hidden and attention dropout (null: the teacher's or checkpoint's)
    # teacher_layers init: which teacher layers to copy (null: the uniform map)
    copy_teacher_layers: list[int] | None = None
    checkpoint: str | None = None  # checkpoint init: the saved student or model folder
    # full (the teacher's vocabulary) or prune (the tokens the training text uses)
    vocab: Literal["full", "prune"] = "full"
    vocab_min_count: int = 1  # prune: keep tokens seen at least this often
    vocab_texts: list[str] | None = None  # prune: more text to count

    def __post_init__(self):
        if self.vocab_min_count < 1:
            raise ConfigError(f"student.vocab_min_count: must be >= 1, got {self.vocab_min_count}")
        if self.vocab == "full" and self.vocab_min_count != 1:
            raise ConfigError("student.vocab_min_count: only used when student.vocab is 'prune'")
        if self.vocab == "full" and self.vocab_texts is not None:
            raise ConfigError("student.vocab_texts: only used when student.vocab is 'prune'")
        if self.init == "checkpoint" and not self.checkpoint:
            raise ConfigError("student.checkpoint: required when student.init is 'checkpoint'")
        if self.init != "checkpoint" and self.checkpoint:
            raise ConfigError("student.checkpoint: only used when student.init is 'checkpoint'")
        if self.copy_teacher_layers is not None and self.init != "teacher_layers":
            raise ConfigError("student.copy_teacher_layers: only used when student.init is 'teacher_layers'")
        if self.init != "config" and self.preset not in (None, StudentConfig.preset):
            raise ConfigError(f"student.preset: only used when student.init is 'config' (got {self.preset})")
        if self.init == "checkpoint":
            for name in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"student.{name}: a checkpoint student keeps its own sizes; remove it "
                                      "(or use student.init: config)")
        for name in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"student.{name}: must be >= 1, got {value}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"student.dropout: must be in [0, 1), got {self.dropout}")

    def sizes(self) -> dict[str, int]:
        """The architecture sizes for init=config: the preset, overridden by explicit keys."""
        sizes = dict(STUDENT_PRESETS[self.preset]) if self.preset else {}
        for name in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads"):
            if getattr(self, name) is not None:
                sizes[name] = getattr(self, name)
        missing = [n for n in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
                   if n not in sizes]
        if missing:
            raise ConfigError(f"student.{missing[0]}: required when student.preset is null")
        if sizes["hidden_size"] % sizes["num_attention_heads"]:
            raise ConfigError(
                f"student.hidden_size: {sizes['hidden_size']} is not divisible by "
                f"num_attention_heads {sizes['num_attention_heads']}"
            )
        return sizes


@dataclass(frozen=True)
class MappingConfig:
    """Student layer -> teacher layer. Uniform by default; or one teacher layer per student layer
    (`teacher_layers: [3, 6, 9, 12]`), or explicit `[student, teacher]` pairs (partial, many-to-one)."""

    teacher_layers: list[int] | None = None  # one teacher layer per student layer, e.g. [3, 6, 9, 12]
    # explicit [student, teacher] layer pairs (partial, many-to-one)
    pairs: list[tuple[int, int]] | None = None
    embeddings: bool = True  # also match the embedding layers (0 -> 0)

    def __post_init__(self):
        if self.teacher_layers is not None and self.pairs is not None:
            raise ConfigError("mapping: give either teacher_layers or pairs, not both")


LOSS_DEFAULTS = {"embedding": 1.0, "hidden": 1.0, "attention": 1.0, "projection": "auto"}
LOSS_PRESETS = {
    # FitNets hints (Romero et al. 2015): the hidden loss on one guided layer pair through a learned regressor.
    "fitnets": {"embedding": 0.0, "hidden": 1.0, "attention": 0.0, "projection": "linear"},
}


@dataclass(frozen=True)
class IntermediateLossConfig:
    """Weights of the intermediate-layer terms (0 turns a term off) and how they are computed.

    Unset weights are 1 (TinyBERT: embedding + hidden + attention) and projection `auto` (learned W_e,
    W_h where the widths differ). `preset: fitnets` (FitNets hints, Romero et al. 2015) instead sets
    embedding 0, attention 0, hidden 1, projection linear (the learned regressor), and the mapping becomes
    one guided pair: the student's middle layer against the teacher's, or the single pair given as
    `mapping.pairs: [[student, teacher]]`. With a preset, `hidden` may rescale the hint loss; setting
    embedding or attention above 0, or another projection, contradicts the preset and is an error.
    """

    # fitnets: hidden loss on one guided pair through a learned regressor
    preset: Literal["fitnets"] | None = None
    embedding: float | None = None  # weight of the embedding term (null: 1)
    hidden: float | None = None  # weight of the hidden-state term (null: 1)
    attention: float | None = None  # weight of the attention term (null: 1)
    attention_loss: Literal["mse", "kl"] = "mse"  # mse of pre-softmax scores, or kl of distributions
    # per_head (equal head counts) or average (head-averaged maps)
    attention_heads: Literal["per_head", "average"] = "per_head"
    # auto (learned where widths differ), linear (always) or none (null: auto)
    projection: Literal["auto", "linear", "none"] | None = None

    def __post_init__(self):
        resolved = LOSS_PRESETS[self.preset] if self.preset else LOSS_DEFAULTS
        for name, value in resolved.items():
            given = getattr(self, name)
            if given is None:
                object.__setattr__(self, name, value)
            elif self.preset and name != "hidden" and given != value:
                raise ConfigError(
                    f"loss.{name}: {given!r} contradicts loss.preset {self.preset} ({name} {value!r}); "
                    f"remove loss.{name} or the preset"
                )
        for name in ("embedding", "hidden", "attention"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name}: weight must be >= 0, got {getattr(self, name)}")
        if self.embedding == self.hidden == self.attention == 0:
            raise ConfigError("loss: every weight is 0, nothing would be learned")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and runtime. `batch_size` is per process; the effective batch is
    batch_size * processes * grad_accum. `mixed_precision` and `grad_accum` left unset are the
    launcher's (`accelerate launch --mixed_precision bf16`), else no and 1; set here, they win."""

    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW weight decay on weight matrices (not biases or LayerNorm)
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    adam_eps: float = 1e-6  # AdamW epsilon
    # linear (warm-up then linear decay to 0) or constant (flat after warm-up)
    schedule: Literal["linear", "constant"] = "linear"
    warmup_ratio: float = 0.1  # share of the steps spent warming up
    batch_size: int = 32  # examples per process per micro-batch
    grad_accum: int | None = None  # micro-batches per optimizer step (null: the launcher's, else 1)
    max_steps: int | None = None  # optimizer steps (null: epochs over the data)
    epochs: int = 1  # passes over the data when max_steps is null
    max_grad_norm: float | None = 1.0  # clip the gradient norm to this (null: no clipping)
    # no, fp16 or bf16 (null: the launcher's, else no)
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    teacher_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the frozen teacher's dtype
    seed: int = 42  # seed of initialisation, shuffling, dropout and masking
    log_every: int = 10  # steps between log lines
    save_every: int = 1000  # steps between checkpoints (and always at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept
    resume_from: str | None = None  # auto (newest intact checkpoint) or a checkpoint folder (--resume)
    tensorboard: bool = False  # write TensorBoard events under output_dir/tensorboard
    progress_bar: bool = True  # show a progress bar (main process)
    group_by_length: bool = False  # task data only: batches of similar-length rows (less padding)
    cpu_retain_memory: bool = True  # CPU runs: keep freed memory mapped (pipeline/training/cpu_memory.py); costs peak RSS
    max_nonfinite_steps: int = 10  # stop after this many steps in a row with a NaN/inf loss, term or gradient norm

    def without_teacher(self, section: str = "train") -> None:
        """Refuse teacher settings in a stage that has no teacher (finetune, pretrain)."""
        if self.teacher_dtype != "float32":
            raise ConfigError(f"{section}.teacher_dtype: this stage has no teacher; remove it")

    def corpus_only(self, section: str = "train") -> None:
        """Refuse options that mean nothing on a packed corpus stream (stage one, pretraining)."""
        if self.group_by_length:
            raise ConfigError(f"{section}.group_by_length: only for task data (finetune, task, bilstm); a corpus "
                              "stream is packed into full-length sequences")

    def __post_init__(self):
        positive = ("batch_size", "grad_accum", "epochs", "log_every", "save_every", "keep_checkpoints",
                    "max_nonfinite_steps")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps: must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"train.max_grad_norm: must be > 0 or null, got {self.max_grad_norm}")


@dataclass(frozen=True)
class CorpusConfig:
    """A raw corpus of any size: a prepared one (`tinydistill prepare-corpus`), or read as a stream.

    path: a prepared corpus directory (it holds manifest.json), a file, a directory, a glob, or a
    datasets hub id. Plain text has one sentence per line with a blank line between documents; each
    JSONL/CSV/parquet record is one document and needs `text_column`.
    `packing`: concatenate the lines of a document into full max_seq_len sequences (else truncate
    each line). Lines that are empty, not UTF-8, or longer than max_line_chars are skipped and counted.
    Streams only: `shuffle_buffer` lines make a block, the unit that ranks and workers share out and
    inside which packed sequences are shuffled (0 or 1: no shuffle, a document per block);
    `num_workers` DataLoader workers tokenise ahead of training, each `prefetch_batches` batches ahead.
    """

    path: str  # a prepared corpus folder, a file, a folder, a glob or a datasets hub id
    # the file format; auto: from the extension (hub: a hub id)
    format: Literal["auto", "text", "jsonl", "csv", "parquet", "hub"] = "auto"
    text_column: str = "text"  # the text column of JSONL/CSV/parquet
    hub_config: str | None = None  # the hub dataset's configuration
    hub_split: str = "train"  # the hub dataset's split
    max_seq_len: int = 128  # tokens per sequence, [CLS] and [SEP] included
    packing: bool = True  # fill sequences with a document's consecutive lines (else truncate each line)
    # lines per block, the unit ranks and workers share and shuffle within (0 or 1: no shuffle)
    shuffle_buffer: int = 10_000
    max_line_chars: int = 100_000  # longer lines are skipped and counted
    num_workers: int = 2  # DataLoader workers tokenising ahead
    prefetch_batches: int = 4  # batches each worker prepares ahead

    def __post_init__(self):
        if self.max_seq_len < 8:
            raise ConfigError(f"corpus.max_seq_len: must be >= 8, got {self.max_seq_len}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"corpus.shuffle_buffer: must be >= 0, got {self.shuffle_buffer}")
        if self.num_workers < 0:
            raise ConfigError(f"corpus.num_workers: must be >= 0, got {self.num_workers}")
        if self.prefetch_batches < 1:
            raise ConfigError(f"corpus.prefetch_batches: must be >= 1, got {self.prefetch_batches}")

