"""Words and POS tags: jieba for Chinese, a word/punctuation split for English.

An example is kept as a list of words plus one tag per word from segmentation to the end; text is only
rendered at the very end (`augment.render`). Re-segmenting rendered text would be wrong: jieba cuts a
literal `[MASK]` into `[`, `MASK`, `]`, so we never do it, and any `[MASK]` already in the input is kept
as one word.

Segmentation uses `jieba.lcut` and tags each word by lookup, not `jieba.posseg.lcut`: jieba's tags are a
per-word dictionary lookup anyway (its HMM only tags out-of-dictionary spans), and `lcut` + lookup is
about 9x faster than posseg with the HMM on reviews (3,300 vs 370 sentences/s on one core). Lookup order:
the optional POS lexicon (PKU majority tags fix jieba's errors such as 安静/nr), then jieba's dictionary,
then a tag implied by the characters (numbers `m`, Latin `eng`, punctuation `x`); other words (found by
jieba's HMM, not in any dictionary) get `un` and are left alone.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.errors import DataError

# Content classes that may be replaced by default. Chinese tags are jieba's (ICTCLAS) and PKU's; English
# words without a lexicon are all `eng`, so for English the POS guard degenerates to "a word for a word".
CONTENT_TAGS = {
    "zh": ("n", "v", "a", "d", "vn", "an", "ad", "vd"),
    "en": ("eng", "n", "v", "a", "d"),
}

# High-frequency words whose tags look like content (是/v, 很/d, 不/d …) but whose replacement would
# change the meaning or the polarity of the sentence rather than paraphrase it; negations above all.
# fmt: off
STOPWORDS_ZH = frozenset([
    "是", "有", "在", "也", "都", "就", "还", "又", "很", "太", "最", "更", "挺", "真", "非常", "比较", "特别", "十分", "不",
    "没", "没有", "别", "不要", "不是", "不能", "不会", "无", "未", "会", "能", "可以", "可能", "要", "想", "让", "被", "把",
    "给", "和", "与", "及", "或", "并", "而", "但", "但是", "可是", "所以", "因为", "如果", "虽然", "这", "那", "这个", "那个",
    "这样", "那样", "这么", "那么", "什么", "怎么", "一个", "一些", "一点", "一下", "上", "下", "里", "中", "来", "去", "说", "做",
    "已经", "正在", "才", "再", "只", "仅", "所", "等", "得", "地", "的", "了", "着", "过", "吧", "吗", "呢", "啊", "呀",
    "哦", "嘛", "个", "些", "每", "各", "其", "自己", "我们", "你们", "他们", "她们", "它们",
])
STOPWORDS_EN = frozenset([
    "a", "an", "the", "and", "or", "but", "if", "then", "else", "of", "in", "on", "at", "to", "for",
    "from", "by", "with", "without", "about", "as", "into", "onto", "over", "under", "is", "am", "are",
    "was", "were", "be", "been", "being", "do", "does", "did", "done", "have", "has", "had", "having",
    "not", "no", "nor", "never", "none", "very", "too", "so", "just", "only", "also", "than", "that",
    "this", "these", "those", "there", "here", "what", "which", "who", "whom", "whose", "when",
    "where", "why", "how", "all", "any", "both", "each", "few", "more", "most", "other", "some",
    "such", "own", "same", "can", "could", "will", "would", "shall", "should", "may", "might", "must",
    "i", "me", "my", "mine", "we", "us", "our", "you", "your", "he", "him", "his", "she", "her", "it",
    "its", "they", "them", "their", "'s", "n't", "don't", "doesn't", "didn't", "isn't", "wasn't",
    "aren't", "weren't", "won't", "can't", "couldn't", "shouldn't",
])
# fmt: on

UNKNOWN_TAG = "un"  # not in any replaceable tag set: an unknown word is never replaced nor a candidate

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAS_CJK = re.compile(f"[{_CJK}]")
_ENGLISH_TOKEN = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*|\d+(?:[.,]\d+)*|\S")
_NUMBER = re.compile(r"[\d０-９]+(?:[.,．，][\d０-９]+)*[%％]?|[零〇一二三四五六七八九十百千万亿两]+")
_LATIN = re.compile(r"[A-Za-zＡ-Ｚａ-ｚ]+")


def detect_language(texts: Iterable[str]) -> str:
    """'zh' when at least 30 % of the non-space characters of `texts` are CJK ideographs, else 'en'."""
    cjk = total = 0
    for text in texts:
        stripped = "".join(str(text).split())
        total += len(stripped)
        cjk += len(re.findall(f"[{_CJK}]", stripped))
    return "zh" if total and cjk / total >= 0.3 else "en"


def load_stopwords(path: str | Path) -> frozenset[str]:
    """One stop word per line; blank lines and `#` comments ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"words.stopwords: cannot read {path}: {err}") from None
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def character_tag(word: str) -> str | None:
    """A tag implied by the characters alone (numbers, Latin, punctuation), or None."""
    if _NUMBER.fullmatch(word):
        return "m"
    if _LATIN.fullmatch(word):
        return "eng"
    if all(unicodedata.category(c)[0] in "PSZC" for c in word):
        return "x"
    return None


def _jieba_word_tags() -> Mapping[str, str]:
    import jieba.posseg

    jieba.posseg.dt.initialize()
    return jieba.posseg.dt.word_tag_tab


class WordTagger:
    """word -> POS tag: lexicon, then jieba's dictionary, then characters, else `un` (cached)."""

    def __init__(self, language: str, lexicon: Mapping[str, str] | None = None):
        self.language = language
        self.lexicon = dict(lexicon or {})
        self._cache: dict[str, str] = {}
        self._jieba_tags = _jieba_word_tags() if language == "zh" else {}

    def __getstate__(self):
        # jieba's 349k-entry tag table is re-fetched in each datasets.map worker, not pickled to it.
        return {**self.__dict__, "_jieba_tags": None, "_cache": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._jieba_tags = _jieba_word_tags() if self.language == "zh" else {}

    def __call__(self, word: str) -> str:
        tag = self._cache.get(word)
        if tag is None:
            tag = self._cache[word] = self._lookup(word)
        return tag

    def _lookup(self, word: str) -> str:
        key = word.lower() if self.language == "en" else word
        tag = self.lexicon.get(key) or self._jieba_tags.get(word) or character_tag(word)
        if tag is not None:
            return tag
        # A word neither the lexicon nor jieba's dictionary knows was invented by jieba's HMM; its HMM tag
        # is a guess and costs ~3 ms per word (posseg's Viterbi), so such words are simply not tagged.
        return "eng" if self.language == "en" else UNKNOWN_TAG


class Segmenter:
    """text -> (words, tags). Picklable, so `datasets.map` workers can each hold one."""

    def __init__(self, tagger: WordTagger, mask_token: str = "[MASK]", hmm: bool = True):
        self.tagger = tagger
        self.language = tagger.language
        self.mask_token = mask_token
        self.hmm = hmm

    def __call__(self, text: str) -> tuple[list[str], list[str]]:
        words: list[str] = []
        pieces = str(text).split(self.mask_token)
        for i, piece in enumerate(pieces):
            if i:
                words.append(self.mask_token)
            words.extend(self._split(piece))
        # A mask already in the input is punctuation to us: never masked again, never replaced.
        return words, ["x" if w == self.mask_token else self.tagger(w) for w in words]

    def _split(self, text: str) -> list[str]:
        if not text:
            return []
        if self.language == "en":
            return _ENGLISH_TOKEN.findall(text)
        import jieba

        return jieba.lcut(text, HMM=self.hmm)


class Eligibility:
    """Which words may be replaced: a content tag, not a stop word, not an ASCII-only token in Chinese."""

    def __init__(
        self, language: str, replaceable_tags: Iterable[str] | None, extra_stopwords: Iterable[str] = ()
    ):
        self.tags = frozenset(replaceable_tags or CONTENT_TAGS[language])
        base = STOPWORDS_ZH if language == "zh" else STOPWORDS_EN
        self.stopwords = base | frozenset(extra_stopwords)
        self.language = language

    def replaceable(self, word: str, tag: str) -> bool:
        if tag not in self.tags:
            return False
        key = word.lower() if self.language == "en" else word
        return key not in self.stopwords and (self.language == "en" or bool(_HAS_CJK.search(word)))

    @staticmethod
    def maskable(tag: str) -> bool:
        """Any word but punctuation: masking `，` tells the teacher nothing (Tang masks any token)."""
        return tag not in ("x", "w")
