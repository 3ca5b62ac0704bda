"""Word vectors as a candidate source: load (word2vec text/binary, GloVe, gensim `.kv`), train, and
turn into a neighbour table.

The table is computed once per run, for the dataset's replaceable vocabulary only, with one batched
matrix product per chunk of query words (scores = Q · Mᵀ / ‖M‖, Q unit rows). `most_similar` per word
would normalise a full copy of the matrix (≈ 7 GB more for the 8M-word Tencent vectors) and pay Python
overhead per query; here the only extra memory is the norms and one chunk of scores (≤ ~256 MB).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

_SCORE_CHUNK_BYTES = 256 * 2**20


def load_word_vectors(path: str | Path, format: str = "auto", limit: int | None = None):
    """A gensim `KeyedVectors` from `path`; `limit` keeps the first `limit` words (huge files).

    `auto` picks by extension: `.kv` gensim native (memory-mapped), `.bin` binary word2vec, anything
    else word2vec text, or GloVe text when the first line is not a `count dim` header.
    """
    from gensim.models import KeyedVectors

    path = Path(path)
    where = "candidates.vectors.path"
    if not path.is_file():
        raise DataError(f"{where}: word vectors file not found: {path}")
    if format == "auto":
        format = {".kv": "kv", ".bin": "binary"}.get(path.suffix, "text")
        if format == "text" and not _has_word2vec_header(path):
            format = "glove"
    try:
        if format == "kv":
            kv = KeyedVectors.load(str(path), mmap="r")
            if limit is not None and limit < len(kv):
                small = KeyedVectors(kv.vector_size, count=0)
                small.add_vectors(kv.index_to_key[:limit], np.asarray(kv.vectors[:limit]))
                kv = small
        else:
            kv = KeyedVectors.load_word2vec_format(
                str(path),
                binary=format == "binary",
                limit=limit,
                no_header=format == "glove",
                unicode_errors="ignore",
            )
    except Exception as err:  # noqa: BLE001 -- gensim raises ValueError, EOFError, UnpicklingError … for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{where}: cannot read word vectors from {path} as {format}: {first}") from None
    if len(kv) == 0:
        raise DataError(f"{where}: {path} holds no vectors")
    return kv


def _has_word2vec_header(path: Path) -> bool:
    with path.open("rb") as handle:
        fields = handle.readline().split()
    return len(fields) == 2 and all(f.isdigit() for f in fields)


def neighbour_table(
    kv,
    words: Iterable[str],
    top_k: int,
    min_similarity: float,
    accept: Callable[[str, str], bool],
    pool: int | None = None,
) -> dict[str, tuple[str, ...]]:
    """word -> its top_k accepted neighbours (cosine >= min_similarity), for the words `kv` knows.

    `pool` nearest neighbours are scored per word (default 4 * top_k + 1) and filtered by `accept`
    (same POS and the like) in order of similarity, so fewer than top_k may survive.
    """
    queries = [w for w in dict.fromkeys(words) if w in kv.key_to_index]
    if not queries:
        return {}
    matrix = kv.vectors
    norms = np.linalg.norm(matrix, axis=1).astype(np.float32)
    norms[norms == 0] = np.inf  # a zero vector is similar to nothing
    pool = min(len(kv), pool or 4 * top_k + 1)
    chunk = max(1, _SCORE_CHUNK_BYTES // (4 * len(kv)))
    table: dict[str, tuple[str, ...]] = {}
    keys = kv.index_to_key
    for start in range(0, len(queries), chunk):
        batch = queries[start : start + chunk]
        rows = np.asarray([kv.key_to_index[w] for w in batch])
        q = matrix[rows] / norms[rows, None]
        scores = (q @ matrix.T) / norms[None, :]
        best = np.argpartition(-scores, pool - 1, axis=1)[:, :pool]
        for word, row, idx in zip(batch, scores, best):
            order = idx[np.argsort(-row[idx], kind="stable")]
            found = []
            for j in order:
                if row[j] < min_similarity or len(found) == top_k:
                    break
                if keys[j] != word and accept(word, keys[j]):
                    found.append(keys[j])
            if found:
                table[word] = tuple(found)
    return table


class _SegmentedCorpus:
    """Re-iterable jieba-segmented lines, so gensim can make several passes without holding the corpus."""

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self) -> Iterator[list[str]]:
        import jieba

        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                words = [w for w in jieba.lcut(line.strip()) if w.strip()]
                if words:
                    yield words


def train_word_vectors(
    corpus_path: str | Path,
    output_path: str | Path,
    dim: int = 100,
    epochs: int = 5,
    min_count: int = 2,
    workers: int = 2,
    seed: int = 0,
) -> Path:
    """Train word2vec (skip-gram) on jieba words of a one-text-per-line corpus and save the vectors.

    The format follows the output name: `.kv` gensim native, `.bin` binary word2vec, else word2vec text;
    all three load with `load_word_vectors`. Written to a temp name and renamed when complete.
    """
    from gensim.models import Word2Vec

    corpus_path, output_path = Path(corpus_path), Path(output_path)
    if not corpus_path.is_file():
        raise DataError(f"corpus not found: {corpus_path}")
    corpus = _SegmentedCorpus(corpus_path)
    try:
        model = Word2Vec(vector_size=dim, min_count=min_count, workers=workers, seed=seed, sg=1)
        model.build_vocab(corpus)
    except (RuntimeError, UnicodeDecodeError) as err:  # gensim: "you must first build vocabulary"
        raise DataError(f"{corpus_path}: cannot build a vocabulary ({err})") from None
    if len(model.wv) == 0:
        raise DataError(f"{corpus_path}: no word occurs {min_count}+ times; lower --min-count or add text")
    model.train(corpus, total_examples=model.corpus_count, epochs=epochs)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=output_path.parent, prefix=f".{output_path.name}.", suffix=output_path.suffix
    )
    os.close(fd)
    try:
        if output_path.suffix == ".kv":
            model.wv.save(tmp, separately=[])
        else:
            model.wv.save_word2vec_format(tmp, binary=output_path.suffix == ".bin")
        os.replace(tmp, output_path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return output_path
