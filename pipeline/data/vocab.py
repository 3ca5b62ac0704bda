"""A character vocabulary built from a corpus, for a teacher trained here when no pretrained one is at hand.

Each CJK character is one token and other text is split into whole lowercase words, digits and
punctuation, exactly as the saved `BertTokenizer` splits it (the same normaliser and pre-tokeniser), so
every token counted here is one the tokenizer can produce. No `##` word pieces: a word outside the
vocabulary becomes [UNK].
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tokenizers import normalizers, pre_tokenizers
from transformers import BertTokenizer

from pipeline.config import atomic_write_text
from pipeline.errors import ConfigError, DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
UNUSED_TOKENS = [f"[unused{i}]" for i in range(1, 11)]  # room for tokens added later without resizing


def build_char_vocab(text_files: list[Path], output_dir: Path, min_count: int = 1, max_size: int | None = None,
                     lowercase: bool = True) -> Path:
    """Count tokens over `text_files` (UTF-8 text, one sentence or document per line) and save a tokenizer.

    Keeps tokens seen at least `min_count` times, most frequent first (ties by the token string), at
    most `max_size` of them, after the special and [unusedN] tokens. Writes `vocab.txt` and the
    tokenizer files to `output_dir` (loadable with `AutoTokenizer.from_pretrained`) and returns it.
    """
    if min_count < 1:
        raise ConfigError(f"min_count: must be >= 1, got {min_count}")
    if max_size is not None and max_size < 1:
        raise ConfigError(f"max_size: must be >= 1, got {max_size}")
    files = [Path(f) for f in text_files]
    if not files:
        raise DataError("no corpus files given")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"corpus file not found: {missing[0]}")
    counts = count_tokens(files, lowercase)
    kept = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
    kept = [t for t in kept if t not in SPECIAL_TOKENS and t not in UNUSED_TOKENS][:max_size]
    if not kept:
        reason = f"no token occurs {min_count} or more times" if counts else "no text"
        raise DataError(f"cannot build a vocabulary from {', '.join(map(str, files))}: {reason}")
    output_dir = Path(output_dir)
    vocab_file = output_dir / "vocab.txt"
    atomic_write_text(vocab_file, "\n".join([*SPECIAL_TOKENS, *UNUSED_TOKENS, *kept]) + "\n")
    # transformers 5 reads the vocabulary from `vocab=`; `vocab_file=` is ignored and gives all-[UNK].
    tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=lowercase)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def count_tokens(files: list[Path], lowercase: bool = True) -> Counter:
    """Token counts over the UTF-8 lines of `files`, split the way BertTokenizer splits before WordPiece."""
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for path in files:
        with path.open("rb") as handle:
            for raw in handle:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue  # as in pipeline.data: a bad line is skipped, never fatal
                words = splitter.pre_tokenize_str(normalizer.normalize_str(line))
                counts.update(word for word, _span in words)
    return counts
