"""Rendering word lists back to text for a BERT tokenizer.

A masked Chinese word of k characters becomes k `[MASK]`s: BERT's Chinese tokenizer is one token per
character, so the teacher sees a whole-word mask of the right length, as in whole-word-masking
pre-training, and the other positions do not shift. Non-CJK runs inside a Chinese word ("iPhone",
"128G") count as one piece each. An English word becomes a single `[MASK]` (Tang et al.). The mask
token is written upper-case and without spaces, the only spelling BERT tokenizers recognise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PIECE_ZH = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+"
)


def mask_pieces(word: str, language: str) -> int:
    """How many mask tokens stand for `word`: its CJK characters plus its other runs; 1 in English."""
    if language != "zh":
        return 1
    return max(1, len(_PIECE_ZH.findall(word)))


def mask_form(word: str, language: str, mask_token: str = "[MASK]") -> str:
    """`word` masked: k mask tokens for a k-piece Chinese word, one for an English word."""
    return mask_token * mask_pieces(word, language)


def join_words(words: Sequence[str], language: str) -> str:
    """Chinese words are joined without spaces (the input's own spaces are words); English with one."""
    return "".join(words) if language == "zh" else " ".join(words)
