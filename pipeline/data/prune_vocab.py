"""Vocabulary pruning (`student.vocab: prune`, TextPruner style): the student keeps the tokens its training
text uses, so its embedding matrix shrinks from the teacher's vocabulary to those rows.

The teacher always reads its own ids. The student reads `old_to_new[teacher ids]`, position for position
(same length, same attention mask): kept tokens get their new ids, every other token the student's [UNK].
The student is saved with a WordPiece tokenizer whose vocabulary is the kept tokens in student-id order,
so it loads with `AutoTokenizer` + `AutoModel*` and reads raw text alone.

WordPiece and the greedy longest match: a word whose teacher pieces are all kept is split into exactly the
same pieces by the pruned tokenizer (each longest match is still the longest one, since no token was
added). A word that needs a pruned piece becomes [UNK] in training (at that piece), while the pruned
tokenizer may split it into other, kept pieces (or make the whole word [UNK]). With `min_count: 1` every
word of the counted text is of the first kind; CJK characters are single-character words, so for Chinese
text the two always agree.

SentencePiece Unigram (XLM-R, e5, mMiniLM): segmentation is the highest-scoring path over the pieces. Removing
pieces that no counted text's best path uses leaves every counted text's best path available and still the
best, so those texts segment identically before and after (TextPruner's argument). One more piece is kept: the
lowest-scoring one, because an unknown character scores (lowest score - 10); keeping the minimum keeps that
penalty, so no new unknown-character path can beat a kept one. The pruned tokenizer is the teacher's
tokenizer.json with the model's vocabulary cut and every special id renumbered; its normaliser and
pre-tokenizer are untouched. BPE vocabularies are refused: their merges would need rewriting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer
from transformers import BertTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from pipeline.config import atomic_write_text, staged_directory
from pipeline.data.corpus import count_stream_tokens, stream_text_batches
from pipeline.errors import ConfigError, DataError, ModelError
from pipeline.models.loading import load_model_config, load_saved_model, load_tokenizer
from pipeline.schema import CorpusConfig, StudentConfig

NAMED_SPECIAL_TOKENS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class VocabMap:
    """The student's vocabulary as teacher ids: student id i is teacher id `kept_ids[i]`."""

    kept_ids: torch.Tensor  # LongTensor, in student-id order
    teacher_size: int  # rows of the teacher's embedding matrix
    unk_id: int  # the student id of [UNK], where every teacher id outside the vocabulary goes

    @property
    def size(self) -> int:
        return len(self.kept_ids)

    def old_to_new(self) -> torch.Tensor:
        """LongTensor of `teacher_size`: each teacher id's student id, [UNK] for the ids not kept."""
        lookup = torch.full((self.teacher_size,), self.unk_id, dtype=torch.long)
        lookup[self.kept_ids] = torch.arange(self.size)
        return lookup


def count_token_ids(id_lists: Iterable[Iterable[int]], vocab_size: int) -> torch.Tensor:
    """How often each id occurs in `id_lists` (e.g. a tokenised transfer set), as a LongTensor of `vocab_size`."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ids in id_lists:
        counts += torch.bincount(torch.as_tensor(list(ids), dtype=torch.long), minlength=vocab_size)
    return counts


def prune(counts: torch.Tensor, min_count: int, teacher_tokenizer, teacher_size: int,
          current: VocabMap | None = None) -> VocabMap:
    """Keep the teacher ids counted at least `min_count` times plus every special token (and, for Unigram,
    the lowest-scoring piece), in teacher-id order; with `current` (an already pruned student) only among the
    ids it still has."""
    keep = counts >= min_count
    keep[required_ids(teacher_tokenizer)] = True
    if current is not None:
        still = torch.zeros(teacher_size, dtype=torch.bool)
        still[current.kept_ids] = True
        keep &= still
    kept_ids = torch.nonzero(keep).flatten()
    unk_id = int(torch.searchsorted(kept_ids, torch.tensor(teacher_tokenizer.unk_token_id)))
    return VocabMap(kept_ids, teacher_size, unk_id)


def vocab_between(teacher_tokenizer, student_tokenizer, teacher_size: int, role: str) -> VocabMap | None:
    """The map from the teacher's ids to a student tokenizer's (None when their vocabularies are the same):
    how stage two rebuilds `old_to_new` for a student pruned in stage one, from its saved tokenizer."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if student_vocab == teacher_vocab:
        return None
    tokens = sorted(student_vocab, key=student_vocab.get)
    missing = [token for token in tokens if token not in teacher_vocab]
    if missing or [student_vocab[t] for t in tokens] != list(range(len(tokens))):
        what = f"{len(missing)} tokens the teacher lacks, e.g. {missing[0]!r}" if missing else "gaps in its ids"
        raise ModelError(f"{role}: its vocabulary is not a subset of the teacher's ({what}); a student must "
                         "read the teacher's vocabulary or a pruned part of it")
    kept_ids = torch.tensor([teacher_vocab[token] for token in tokens], dtype=torch.long)
    return VocabMap(kept_ids, teacher_size, student_tokenizer.unk_token_id)


def gather_vocab_rows(model: PreTrainedModel, rows: torch.Tensor) -> None:
    """Shrink `model`'s vocabulary, in place, to its embedding rows `rows` (new id i = old row rows[i]):
    the word embeddings and, for a masked LM, the output layer and its bias (tied or not)."""
    rows = rows.to(torch.long)
    with torch.no_grad():
        # The kept rows first, then resize_token_embeddings keeps the first len(rows) of them: it knows
        # every architecture's tied decoder, bias and config.vocab_size.
        embeddings = model.get_input_embeddings()
        embeddings.weight[: len(rows)] = embeddings.weight[rows].clone()
        output = model.get_output_embeddings()
        if output is not None:
            if output.weight is not embeddings.weight:
                output.weight[: len(rows)] = output.weight[rows].clone()
            if output.bias is not None:
                output.bias[: len(rows)] = output.bias[rows].clone()
    old_ids = {name: getattr(model.config, name, None) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
    model.resize_token_embeddings(len(rows))
    for name, old in old_ids.items():
        if old is not None:
            new = torch.nonzero(rows == old).flatten()
            setattr(model.config, name, int(new[0]) if len(new) else None)
    if old_ids["pad_token_id"] is not None:
        model.get_input_embeddings().padding_idx = model.config.pad_token_id


def tokenizer_spec(tokenizer) -> dict:
    """The tokenizer.json of a fast tokenizer as a dict ({} for a slow one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else {}


def required_ids(tokenizer) -> list[int]:
    """The ids every pruned vocabulary keeps: the special tokens and, for a Unigram model, its lowest-scoring
    piece (the unknown-character penalty is that score minus 10; see the module docstring)."""
    ids = list(tokenizer.all_special_ids)
    model = tokenizer_spec(tokenizer).get("model") or {}
    if model.get("type") == "Unigram":
        scores = [score for _piece, score in model["vocab"]]
        ids.append(min(range(len(scores)), key=scores.__getitem__))
    return ids


def check_prunable(tokenizer, source: str, what: str = "student.vocab: prune") -> str:
    """"wordpiece" or "unigram": the kind of vocabulary `pruned_tokenizer` rebuilds exactly; any other
    tokenizer is refused in one line."""
    spec = tokenizer_spec(tokenizer)
    model = spec.get("model") or {}
    if model.get("type") == "Unigram":
        return "unigram"
    parts = (model.get("type"), (spec.get("normalizer") or {}).get("type"),
             (spec.get("pre_tokenizer") or {}).get("type"))
    if parts != ("WordPiece", "BertNormalizer", "BertPreTokenizer"):
        raise ModelError(f"{what} supports WordPiece (BERT-style) and SentencePiece Unigram (XLM-R-style) "
                         f"tokenizers; {source} has {type(tokenizer).__name__} ({' / '.join(map(str, parts))})")
    if model["continuing_subword_prefix"] != "##" or model["max_input_chars_per_word"] != 100:
        raise ModelError(f"{what} needs WordPiece with prefix '##' and 100 chars per word; {source} "
                         f"has {model['continuing_subword_prefix']!r} and {model['max_input_chars_per_word']}")
    return "wordpiece"


def pruned_tokenizer(teacher_tokenizer, vocab_map: VocabMap):
    """The teacher's tokenizer over the kept tokens, in student-id order, normalising exactly as the teacher's."""
    if (tokenizer_spec(teacher_tokenizer).get("model") or {}).get("type") == "Unigram":
        return _pruned_unigram(teacher_tokenizer, vocab_map)
    return _pruned_wordpiece(teacher_tokenizer, vocab_map)


def _pruned_wordpiece(teacher_tokenizer, vocab_map: VocabMap) -> BertTokenizer:
    """A BertTokenizer over the kept tokens in student-id order, normalising exactly as the teacher's."""
    id_to_token = {i: t for t, i in teacher_tokenizer.get_vocab().items()}
    vocab = {id_to_token[int(old)]: new for new, old in enumerate(vocab_map.kept_ids)}
    normalizer = tokenizer_spec(teacher_tokenizer)["normalizer"]
    named = {name: str(getattr(teacher_tokenizer, name)) for name in NAMED_SPECIAL_TOKENS}
    extras = [t for t in teacher_tokenizer.all_special_tokens if t not in named.values()]
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=normalizer["lowercase"],
                              tokenize_chinese_chars=normalizer["handle_chinese_chars"],
                              strip_accents=normalizer["strip_accents"],
                              model_max_length=teacher_tokenizer.model_max_length, **named)
    if extras:
        tokenizer.add_special_tokens({"additional_special_tokens": extras})
    return tokenizer


def _pruned_unigram(teacher_tokenizer, vocab_map: VocabMap) -> PreTrainedTokenizerFast:
    """The teacher's tokenizer.json with the Unigram vocabulary cut to the kept pieces and every id in it
    (unknown id, added tokens, the post-processor's special tokens) renumbered."""
    spec = tokenizer_spec(teacher_tokenizer)
    lookup = vocab_map.old_to_new().tolist()
    spec["model"]["vocab"] = [spec["model"]["vocab"][int(old)] for old in vocab_map.kept_ids]
    spec["model"]["unk_id"] = lookup[spec["model"]["unk_id"]]
    for token in spec["added_tokens"]:
        token["id"] = lookup[token["id"]]
    spec["post_processor"] = _renumber_processor(spec["post_processor"], lookup)
    named = {name: str(value) for name in (*NAMED_SPECIAL_TOKENS, "bos_token", "eos_token")
             if (value := getattr(teacher_tokenizer, name, None)) is not None}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   model_max_length=teacher_tokenizer.model_max_length, **named)


def _renumber_processor(processor: dict | None, lookup: list[int]) -> dict | None:
    """A post-processor (TemplateProcessing, Roberta/BertProcessing or a Sequence of them) with new ids."""
    if processor is None:
        return None
    kind = processor["type"]
    if kind == "Sequence":
        return {**processor, "processors": [_renumber_processor(p, lookup) for p in processor["processors"]]}
    if kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [lookup[i] for i in special["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        processor["sep"], processor["cls"] = [(token, lookup[i]) for token, i in (processor["sep"], processor["cls"])]
    elif kind != "ByteLevel":
        raise ModelError(f"vocabulary pruning cannot renumber a {kind} post-processor")
    return processor


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    """`save_pretrained`, plus for WordPiece a vocab.txt (one token a line, in id order) for tools that read
    BERT vocabulary files: transformers 5 itself writes and reads tokenizer.json only."""
    tokenizer.save_pretrained(directory)
    if isinstance(tokenizer, BertTokenizer):
        vocab = tokenizer.get_vocab()
        atomic_write_text(Path(directory) / "vocab.txt", "".join(f"{t}\n" for t in sorted(vocab, key=vocab.get)))


def check_round_trip(teacher_tokenizer, student_tokenizer, vocab_map: VocabMap, texts: list[str]) -> int:
    """The student's tokenizer must give `old_to_new[teacher ids]` on text whose tokens it kept; returns how
    many texts were checked (a text with a pruned token is passed over: see the module docstring)."""
    if not texts:
        return 0
    lookup = vocab_map.old_to_new()
    teacher_rows = teacher_tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    student_rows = student_tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    checked = 0
    for text, teacher_ids, student_ids in zip(texts, teacher_rows, student_rows, strict=True):
        teacher_ids = torch.tensor(teacher_ids)
        expected = lookup[teacher_ids]
        if (expected == vocab_map.unk_id).sum() > (teacher_ids == teacher_tokenizer.unk_token_id).sum():
            continue  # a pruned piece: the pruned tokenizer may split the word otherwise
        if student_ids != expected.tolist():
            raise ModelError(f"vocabulary pruning: the pruned tokenizer splits {text[:40]!r} differently from "
                             "the original; its normalisation is not reproduced (please report this)")
        checked += 1
    return checked


def student_vocabulary(cfg: StudentConfig, teacher_tokenizer, teacher_source: str, teacher_size: int,
                       student: PreTrainedModel,
                       count_ids: Callable[[], tuple[torch.Tensor, list[str]]]) -> tuple[VocabMap | None, object]:
    """(the student's VocabMap or None when it reads the teacher's ids, the student's tokenizer).

    A checkpoint student saved with a smaller tokenizer (a pruned stage-one output) keeps it. With
    `cfg.vocab == "prune"`, `count_ids()` (teacher-id counts over the text the student trains on, and a
    few of those texts) plus the counts of `cfg.vocab_texts` decide which rows stay, the student is shrunk in place, and its tokenizer is
    built and checked on the texts.
    """
    current, tokenizer = None, teacher_tokenizer
    if cfg.init == "checkpoint" and _has_tokenizer(cfg.checkpoint):
        saved = load_tokenizer(cfg.checkpoint, "student checkpoint tokenizer")
        current = vocab_between(teacher_tokenizer, saved, teacher_size, f"student.checkpoint {cfg.checkpoint}")
        tokenizer = saved if current is not None else teacher_tokenizer
    if cfg.vocab == "full":
        return current, tokenizer
    check_prunable(teacher_tokenizer, teacher_source)
    counts, probe_texts = count_ids()
    for index, path in enumerate(cfg.vocab_texts or []):
        try:
            more, texts = count_stream_tokens(CorpusConfig(path=path), teacher_tokenizer, teacher_size)
        except DataError as err:
            raise DataError(f"student.vocab_texts[{index}]: {err}") from None
        counts, probe_texts = counts + more, probe_texts + texts
    pruned = prune(counts, cfg.vocab_min_count, teacher_tokenizer, teacher_size, current)
    gather_vocab_rows(student, current.old_to_new()[pruned.kept_ids] if current else pruned.kept_ids)
    tokenizer = pruned_tokenizer(teacher_tokenizer, pruned)
    check_round_trip(teacher_tokenizer, tokenizer, pruned, probe_texts)
    return pruned, tokenizer


def id_lookup(vocab_map: VocabMap | None, device) -> torch.Tensor | None:
    """`vocab_map.old_to_new()` on `device`, for `student_batch`; None for a student on the teacher's ids."""
    return vocab_map.old_to_new().to(device) if vocab_map is not None else None


def student_batch(batch: dict[str, torch.Tensor], lookup: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The batch as the student reads it: input_ids through `lookup` (old_to_new, on the batch's device)."""
    if lookup is None:
        return batch
    return {**batch, "input_ids": lookup[batch["input_ids"]]}


def describe(vocab_map: VocabMap | None, teacher_size: int) -> dict:
    """Run-header facts: the student's vocabulary against the teacher's."""
    return {"student_vocab": vocab_map.size if vocab_map else teacher_size, "teacher_vocab": teacher_size}


def _has_tokenizer(directory: str) -> bool:
    return (Path(directory).expanduser() / "tokenizer_config.json").is_file()


def prune_model_dir(model_dir: str | Path, output_dir: str | Path, texts: list[str], min_count: int = 1,
                    overwrite: bool = False) -> str:
    """`tinydistill prune-vocab`: `model_dir` (any saved model and its tokenizer, a teacher included) cut to
    the pieces that `texts` use at least `min_count` times plus the special tokens, written to `output_dir`.
    Every text is checked to tokenise to the remapped ids of the original tokenizer before anything is
    written; the folder appears only once complete."""
    source, output_dir = str(model_dir), Path(output_dir).expanduser()
    if not texts:
        raise ConfigError("prune-vocab: give at least one --texts FILE")
    if min_count < 1:
        raise ConfigError(f"prune-vocab: --min-count must be >= 1, got {min_count}")
    if output_dir.exists() and not overwrite:
        raise ConfigError(f"prune-vocab: {output_dir} already exists (--overwrite replaces it)")
    tokenizer = load_tokenizer(source, "model")
    check_prunable(tokenizer, source, "prune-vocab")
    config = load_model_config(source, "model")
    size = config.vocab_size
    corpora = [CorpusConfig(path=path) for path in texts]
    counts = torch.zeros(size, dtype=torch.long)
    for path, corpus in zip(texts, corpora, strict=True):
        try:
            counts += count_stream_tokens(corpus, tokenizer, size)[0]
        except DataError as err:
            raise DataError(f"prune-vocab --texts {path}: {err}") from None
    model = load_saved_model(getattr(transformers, (config.architectures or ["AutoModel"])[0], transformers.AutoModel),
                             source, "model")
    parameters = model.num_parameters()
    vocab_map = prune(counts, min_count, tokenizer, size)
    gather_vocab_rows(model, vocab_map.kept_ids)
    pruned = pruned_tokenizer(tokenizer, vocab_map)
    checked = sum(check_round_trip(tokenizer, pruned, vocab_map, batch)
                  for corpus in corpora for batch in stream_text_batches(corpus))
    with staged_directory(output_dir) as staging:
        model.save_pretrained(staging)
        save_tokenizer(pruned, staging)
        atomic_write_text(staging / "pruned_vocab.json", json.dumps(
            {"source": source, "texts": texts, "min_count": min_count, "vocab_before": size,
             "vocab_after": vocab_map.size, "parameters_before": parameters,
             "parameters_after": model.num_parameters(), "texts_checked": checked}, indent=2) + "\n")
    return (f"prune-vocab: vocabulary {size:,} -> {vocab_map.size:,}, parameters {parameters:,} -> "
            f"{model.num_parameters():,}; {checked:,} texts tokenise identically (ids remapped) -> {output_dir}")
