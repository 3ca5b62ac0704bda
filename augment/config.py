"""The `tinydistill augment` config tree: one frozen dataclass per YAML section.

Defaults follow Tang et al. 2019 (p_mask = p_pos = 0.1, p_ng = 0.25, n-grams of 1..5 words, 20 variants)
and TinyBERT (top-K = 15 candidates, p = 0.4 in `tinybert` mode). Every check that needs more than a
type lives in `__post_init__` and names its key, so a bad value fails before any data is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pipeline.errors import ConfigError

# Tags that name entities, numbers or punctuation. The issue forbids replacing these, so a config
# that lists one as replaceable is a mistake we report instead of silently honouring.
NEVER_REPLACEABLE_TAGS = frozenset(
    {"nr", "nr1", "nr2", "nrj", "nrf", "nrfg", "nrt", "ns", "nsf", "nt", "nz", "nx", "m", "mq", "x", "w", "t"}
)


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}: must be in [0, 1], got {value}")


@dataclass(frozen=True)
class InputConfig:
    """Where the task dataset comes from: a local file, a `save_to_disk` folder, or a hub id."""

    path: str  # a file (csv, tsv, json/jsonl, parquet, text), a save_to_disk folder or a hub id
    # the file format; auto: from the extension
    format: Literal["auto", "csv", "tsv", "json", "parquet", "text", "disk", "hub"] = "auto"
    split: str = "train"  # the split to read from a folder or hub dataset
    name: str | None = None  # hub dataset configuration name


@dataclass(frozen=True)
class ColumnsConfig:
    """Column names. Either `text` (+ optional `text_pair`) or `tokens` + `tags` (token classification)."""

    text: str | None = None  # the text column
    text_pair: str | None = None  # the second text of a pair task
    label: str | None = None  # the label column, copied to every variant
    tokens: str | None = None  # the token-list column (token classification)
    tags: str | None = None  # the tag-list column (token classification)
    outside_tag: str = "O"  # compared as a string, so 0 and "0" both match an integer O label of 0

    def __post_init__(self):
        if (self.text is None) == (self.tokens is None):
            raise ConfigError("text: set exactly one of text (sentences) or tokens (token classification)")
        if self.tokens is not None and self.tags is None:
            raise ConfigError("tags: token classification needs the tag column next to tokens")
        if self.tokens is not None and self.text_pair is not None:
            raise ConfigError("text_pair: not supported together with tokens")

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The columns that are segmented and augmented, in order."""
        if self.tokens is not None:
            return (self.tokens,)
        return (self.text,) if self.text_pair is None else (self.text, self.text_pair)


@dataclass(frozen=True)
class WordsConfig:
    """Segmentation and POS: jieba for Chinese, a word/punctuation split for English."""

    pos_lexicon: str | None = (
        None  # word -> majority tag file from `tinydistill pos-lexicon`; wins over jieba
    )
    replaceable_tags: tuple[str, ...] | None = None  # None: the language's content tags (see augment.words)
    stopwords: str | None = None  # extra stop words, one per line; added to the built-in list
    hmm: bool = True  # jieba's HMM for out-of-dictionary words

    def __post_init__(self):
        if self.replaceable_tags is not None:
            banned = sorted(set(self.replaceable_tags) & NEVER_REPLACEABLE_TAGS)
            if banned:
                raise ConfigError(
                    f"replaceable_tags: entity, number and punctuation tags are never replaced, remove {banned}"
                )
            if not self.replaceable_tags:
                raise ConfigError("replaceable_tags: must list at least one tag")


@dataclass(frozen=True)
class OpsConfig:
    """The perturbations. `tang`: mask / same-POS replace / n-gram; `tinybert`: replace with p_replace."""

    # tang (mask / same-POS replace / n-gram) or tinybert (replace with p_replace)
    mode: Literal["tang", "tinybert"] = "tang"
    n_variants: int = 20  # augmented variants per row (the original is kept too)
    p_mask: float = 0.1  # tang: chance a word becomes [MASK]
    p_pos: float = 0.1  # tang: chance a word is replaced by a same-POS word
    p_ng: float = 0.25  # tang: chance a variant is cut to an n-gram
    ngram_max: int = 5  # tang: the longest n-gram kept
    p_replace: float = 0.4  # tinybert: chance a word is replaced by a candidate
    draws_per_variant: int = 3  # give up after n_variants * this many draws (short texts have few variants)
    include_original: bool = True  # write each input example as variant 0
    mask_token: str = "[MASK]"  # what a masked word becomes

    def __post_init__(self):
        if self.n_variants < 1:
            raise ConfigError(f"n_variants: must be >= 1, got {self.n_variants}")
        for name in ("p_mask", "p_pos", "p_ng", "p_replace"):
            _check_probability(name, getattr(self, name))
        if self.p_mask + self.p_pos > 1.0:
            raise ConfigError(f"p_pos: p_mask + p_pos must be <= 1, got {self.p_mask + self.p_pos}")
        if self.ngram_max < 1:
            raise ConfigError(f"ngram_max: must be >= 1, got {self.ngram_max}")
        if self.draws_per_variant < 1:
            raise ConfigError(f"draws_per_variant: must be >= 1, got {self.draws_per_variant}")
        if not self.mask_token.strip():
            raise ConfigError("mask_token: must not be empty")


@dataclass(frozen=True)
class VectorsConfig:
    """gensim word vectors; neighbours of the same POS above `min_similarity` become candidates."""

    path: str  # the vectors file (word2vec text or binary, GloVe, gensim .kv)
    # the file format; auto: from the extension
    format: Literal["auto", "text", "binary", "kv", "glove"] = "auto"
    limit: int | None = None  # read only the first `limit` words (files are frequency-sorted)
    top_k: int = 15  # neighbours looked at per word
    min_similarity: float = 0.5  # cosine below which a neighbour is not a candidate

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: must be >= 1, got {self.limit}")
        if self.top_k < 1:
            raise ConfigError(f"top_k: must be >= 1, got {self.top_k}")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ConfigError(f"min_similarity: must be in [-1, 1], got {self.min_similarity}")


@dataclass(frozen=True)
class DictionaryConfig:
    """A synonym dictionary: Cilin (`Aa01A01= 人 士 …`, only `=` groups) or `word syn1 syn2 …` lines."""

    path: str  # the dictionary file
    # cilin (only = groups), plain (word syn1 syn2 ...) or auto
    format: Literal["auto", "cilin", "plain"] = "auto"


@dataclass(frozen=True)
class MlmConfig:
    """The teacher's MLM head at word level: a k-piece word is masked as k [MASK]s, top-K whole words."""

    model: str  # hub id or local folder with an AutoModelForMaskedLM and its tokenizer
    top_k: int = 15  # whole-word predictions kept per masked word
    batch_size: int = 64  # sentences per MLM forward
    max_length: int = 128  # tokens per MLM input

    def __post_init__(self):
        for name in ("top_k", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise ConfigError(f"max_length: must be >= 8, got {self.max_length}")


@dataclass(frozen=True)
class CandidatesConfig:
    """Any combination of the three candidate sources; their candidates are pooled per word."""

    vectors: VectorsConfig | None = None  # gensim word vectors: same-POS neighbours
    dictionary: DictionaryConfig | None = None  # a synonym dictionary (Cilin or plain)
    mlm: MlmConfig | None = None  # the teacher's masked-LM head at word level


@dataclass(frozen=True)
class OutputConfig:
    formats: tuple[Literal["arrow", "jsonl"], ...] = ("arrow", "jsonl")  # arrow (save_to_disk) and/or jsonl
    keep_words: bool = (
        False  # also write `<column>_words`: the variant as a word list, masks as the mask token
    )

    def __post_init__(self):
        if not self.formats:
            raise ConfigError("formats: choose at least one of 'arrow', 'jsonl'")


@dataclass(frozen=True)
class AugmentConfig:
    output_dir: str  # where the transfer set goes
    input: InputConfig  # the task dataset to augment
    columns: ColumnsConfig  # which columns hold text, labels or tokens and tags
    seed: int = 0  # seed of every random choice
    overwrite: bool = False  # replace a finished output_dir (--overwrite)
    shard: str | None = None  # "i/n": build only the i-th of n contiguous shards
    language: Literal["auto", "zh", "en"] = "auto"  # zh (jieba) or en; auto decides from the text
    words: WordsConfig = field(default_factory=WordsConfig)  # segmentation and POS
    ops: OpsConfig = field(default_factory=OpsConfig)  # the perturbations and how many variants per row
    # where replacement words come from (vectors, a dictionary, the teacher's MLM)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)  # the transfer set's file formats
    num_proc: int = 1  # worker processes
    batch_size: int = 256  # examples per datasets.map batch

    def __post_init__(self):
        if self.shard is not None:
            parse_shard(self.shard)
        if self.num_proc < 1:
            raise ConfigError(f"num_proc: must be >= 1, got {self.num_proc}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` -> (i, n) with 0 <= i < n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise ConfigError(f"shard: must look like i/n with 0 <= i < n, got {text!r}")
    return int(match.group(1)), int(match.group(2))
