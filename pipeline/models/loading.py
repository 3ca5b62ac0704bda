"""Loading teachers, tokenizers and students: hub ids or local directories, checked before compute."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from pipeline.errors import ModelError
from pipeline.models.architectures import (
    dropout_keys,
    layer_pattern,
    positions_note,
    student_sizes,
    usable_positions,
)
from pipeline.models.hub import split_revision
from pipeline.schema import StudentConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_source(name_or_path: str, role: str, markers: tuple[str, ...] = ("config.json",)) -> None:
    """A clear error for a local path that does not exist, before transformers tries the hub.
    A local directory must hold one of `markers` (the files that make it a saved model or tokenizer)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_dir() and not any((path / marker).is_file() for marker in markers):
            what = "a saved model" if markers == ("config.json",) else "a saved model or tokenizer"
            raise ModelError(f"{role} directory {name_or_path} has no {' or '.join(markers)} (not {what})")
        return
    # Hub ids look like "name" or "org/name"; anything else is a local path that is missing.
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise ModelError(f"{role} path not found: {name_or_path}")


def load_model_config(name_or_path: str, role: str) -> PretrainedConfig:
    """The config of a local model folder or a hub id (`org/name@revision` pins a revision)."""
    source, revision = split_revision(name_or_path)
    check_model_source(source, role)
    try:
        return AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load {role} {name_or_path!r}: {_first_line(err)}") from None


def load_tokenizer(name_or_path: str, role: str = "tokenizer"):
    """The tokenizer of a saved model, or a tokenizer saved alone (e.g. by `tinydistill build-vocab`)."""
    source, revision = split_revision(name_or_path)
    check_model_source(source, role, markers=("config.json", "tokenizer_config.json"))
    try:
        return AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the {role} of {name_or_path!r}: {_first_line(err)}") from None


def load_pretrained(model_class, name_or_path: str, role: str, dtype: torch.dtype | None = None, **kwargs):
    """`model_class.from_pretrained` with sdpa attention and a one-line error on failure."""
    source, revision = split_revision(name_or_path)
    check_model_source(source, role)
    try:
        return model_class.from_pretrained(source, attn_implementation="sdpa", dtype=dtype, revision=revision,
                                           **kwargs)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load {role} {name_or_path!r}: {_first_line(err)}") from None


def teacher_identity(*sources: str) -> str:
    """The teachers a run distils from, as a checkpoint records them: local folders by absolute path."""
    names = []
    for source in sources:
        path = Path(split_revision(source)[0]).expanduser()
        names.append(str(path.resolve()) if path.exists() else source)
    return ", ".join(names)


def load_saved_model(model_class, name_or_path: str, role: str) -> PreTrainedModel:
    """A saved model in float32 with nothing added: a bare encoder whose checkpoint has no pooler (an imported
    e5 teacher) does not get one with random weights, so saving it again writes what was read."""
    model, loading = load_pretrained(model_class, name_or_path, role, dtype=torch.float32, output_loading_info=True)
    pooler = getattr(model, "pooler", None)
    if pooler is not None and {f"pooler.{name}" for name, _ in pooler.named_parameters()} <= set(loading["missing_keys"]):
        model.pooler = None
    return model


def load_teacher(name_or_path: str, dtype: str = "float32", model_class=AutoModel) -> PreTrainedModel:
    """A frozen teacher in eval mode: no gradients, never wrapped for DDP."""
    teacher = load_pretrained(model_class, name_or_path, "teacher", dtype=DTYPES[dtype])
    teacher.requires_grad_(False)
    return teacher.eval()


def load_masked_lm_teacher(name_or_path: str, dtype: str = "float32") -> PreTrainedModel:
    """A frozen teacher with its masked-LM head, in eval mode. A checkpoint without the head's weights
    (e.g. a bare `BertModel`) is refused: transformers would silently give it a random head."""
    teacher, loading = load_pretrained(AutoModelForMaskedLM, name_or_path, "teacher", dtype=DTYPES[dtype],
                                       output_loading_info=True)
    base = f"{teacher.base_model_prefix}."
    head_missing = sorted(key for key in loading["missing_keys"] if not key.startswith(base))
    if head_missing:
        raise ModelError(
            f"teacher {name_or_path} has no masked-LM head weights (missing {head_missing[0]} and "
            f"{len(head_missing) - 1} more); objective distilbert needs a teacher saved with its MLM head, "
            "e.g. a BertForMaskedLM such as bert-base-chinese or a `tinydistill pretrain` output"
        )
    teacher.requires_grad_(False)
    return teacher.eval()


def build_student(cfg: StudentConfig, teacher_config: PretrainedConfig, teacher_source: str,
                  model_class=AutoModel, **config_overrides) -> PreTrainedModel:
    """The student the config asks for, with sdpa attention, in float32 for training."""
    if cfg.init == "checkpoint":
        student = load_pretrained(model_class, cfg.checkpoint, "student checkpoint", dtype=torch.float32,
                                  **config_overrides)
    elif cfg.init == "teacher_layers":
        student = _student_from_teacher_layers(cfg, teacher_config, teacher_source, model_class, config_overrides)
    else:
        student_config = teacher_config.__class__.from_dict(teacher_config.to_dict())
        for key, value in {**student_sizes(teacher_config, cfg.sizes()), **config_overrides}.items():
            setattr(student_config, key, value)
        _apply_dropout(student_config, cfg.dropout)
        student_config._attn_implementation = "sdpa"
        student = model_class.from_config(student_config, attn_implementation="sdpa")
    if cfg.dropout is not None:
        _apply_dropout(student.config, cfg.dropout)
        for module in student.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = cfg.dropout
    return student.float()


def _student_from_teacher_layers(cfg, teacher_config, teacher_source, model_class, config_overrides):
    depth = teacher_config.num_hidden_layers
    if cfg.copy_teacher_layers is not None:
        layers = list(cfg.copy_teacher_layers)
    else:
        student_depth = cfg.num_hidden_layers or (depth // 2)
        step = depth // student_depth if student_depth else 0
        if student_depth < 1 or step < 1:
            raise ModelError(f"cannot pick {student_depth} layers from a {depth}-layer teacher")
        layers = [step * m for m in range(1, student_depth + 1)]
    bad = [layer for layer in layers if not 1 <= layer <= depth]
    if bad:
        raise ModelError(
            f"student.copy_teacher_layers: teacher layer {bad[0]} is out of range (the teacher has {depth} layers)"
        )
    for name in ("hidden_size", "intermediate_size", "num_attention_heads"):
        wanted = getattr(cfg, name)
        if wanted is not None and wanted != getattr(teacher_config, name):
            raise ModelError(
                f"student.{name}: init teacher_layers copies the teacher's width, so {name} must equal "
                f"the teacher's {getattr(teacher_config, name)} (got {wanted})"
            )
    layer = layer_pattern(teacher_config, "teacher")
    teacher = load_pretrained(model_class, teacher_source, "teacher", dtype=torch.float32, **config_overrides)
    student_config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    student_config.num_hidden_layers = len(layers)
    student_config._attn_implementation = "sdpa"
    student = model_class.from_config(student_config, attn_implementation="sdpa")
    state = teacher.state_dict()
    renamed = {}
    for key, value in state.items():
        found = layer.search(key)
        if found:
            teacher_index = int(found.group(1)) + 1
            if teacher_index not in layers:
                continue
            key = f"{key[:found.start(1)]}{layers.index(teacher_index)}{key[found.end(1):]}"
        renamed[key] = value
    missing, _unexpected = student.load_state_dict(renamed, strict=False)
    encoder_missing = [k for k in missing if layer.search(k)]
    if encoder_missing:
        raise ModelError(f"copying teacher layers left encoder weights unset, e.g. {encoder_missing[0]}")
    return student


def _apply_dropout(config: PretrainedConfig, dropout: float | None) -> None:
    if dropout is None:
        return
    for name in dropout_keys(config):
        if hasattr(config, name):
            setattr(config, name, dropout)


def check_teacher_student_fit(teacher_config: PretrainedConfig, student_config: PretrainedConfig,
                              attention_weight: float, attention_heads: str, max_seq_len: int,
                              vocab_map=None) -> None:
    """Fail before compute when teacher and student cannot be distilled against each other. `vocab_map`
    (a `pipeline.data.prune_vocab.VocabMap`) is the student's pruned vocabulary, if it has one."""
    student_vocab = vocab_map.size if vocab_map is not None else teacher_config.vocab_size
    if student_vocab != student_config.vocab_size:
        raise ModelError(
            f"teacher vocabulary has {teacher_config.vocab_size} entries, student {student_config.vocab_size}: "
            "both must read the same token ids"
            if vocab_map is None else
            f"the student's tokenizer has {student_vocab} tokens, its model {student_config.vocab_size} rows"
        )
    t_heads, s_heads = teacher_config.num_attention_heads, student_config.num_attention_heads
    if attention_weight > 0 and attention_heads == "per_head" and t_heads != s_heads:
        raise ModelError(
            f"teacher has {t_heads} attention heads, student {s_heads}: per-head attention loss needs equal "
            "counts; set loss.attention_heads: average (head-averaged maps) or loss.attention: 0"
        )
    for role, config in (("teacher", teacher_config), ("student", student_config)):
        limit = usable_positions(config)
        if limit is not None and max_seq_len > limit:
            raise ModelError(f"max_seq_len {max_seq_len} exceeds the {role}'s {positions_note(config)}")


def forward_input_names(model: torch.nn.Module) -> set[str]:
    """The batch keys a model's forward takes: DistilBERT, for one, has no token_type_ids."""
    return {name for name in ("input_ids", "attention_mask", "token_type_ids")
            if name in inspect.signature(model.forward).parameters}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_count(config: PretrainedConfig, model_class=AutoModel) -> int:
    """The parameters of `model_class` built from `config`, counted without allocating its weights."""
    with torch.device("meta"):
        return count_parameters(model_class.from_config(config))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
