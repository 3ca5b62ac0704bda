"""`tinydistill prepare-corpus`: tokenise and pack a corpus once, for random access during training.

    tinydistill prepare-corpus data/wiki_zh/ --tokenizer bert-base-chinese --output data/wiki_zh_128 \
        --max-seq-len 128 --num-proc 16
    # or one shard per machine, then join them:
    tinydistill prepare-corpus data/wiki_zh/ --tokenizer ... --output shards/3 --shard 3/8
    tinydistill merge-corpus data/wiki_zh_128 shards/*

Rows are read in order (the same sources and bad-line rules as streaming), tokenised in parallel by
`datasets.map(batched=True, num_proc=N)`, packed with the streaming reader's rule (`packing.pack`) and
written as fixed-length rows. The output is built under a temp name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pipeline.data.corpus.packing import PACKING_MODES, pack
from pipeline.data.corpus.prepared import (
    FORMAT,
    MANIFEST,
    VERSION,
    is_prepared_corpus,
    read_manifest,
    tokenizer_fingerprint,
)
from pipeline.data.corpus.sources import DatasetsSource, FileSource, resolve_corpus_files
from pipeline.errors import ConfigError, DataError
from pipeline.schema import CorpusConfig

ROWS_PER_WRITE = 65_536


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard: expected I/N such as 0/8, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard: need 0 <= I < N, got {text!r}")
    return index, count


def _output_checks(output: Path, overwrite: bool) -> None:
    if output.exists():
        if not overwrite:
            raise DataError(f"{output} exists; pass --overwrite to replace it")
        if not is_prepared_corpus(output):
            raise DataError(f"{output} exists and is not a prepared corpus; refusing to replace it")


def _rows(fmt: str, files: list[str], cfg: CorpusConfig):
    source = FileSource(fmt, files, cfg.text_column, cfg.max_line_chars) if fmt in ("text", "jsonl") \
        else DatasetsSource(cfg, fmt, files)
    for row, _ in source.rows(list(range(len(files) or 1)), None):
        yield {"text": row.text, "bad": row.bad}


def _sources(inputs: list[str], cfg: CorpusConfig, shard: tuple[int, int] | None) -> tuple[str, list[str]]:
    formats, files = set(), []
    for path in inputs:
        fmt, found = resolve_corpus_files(replace(cfg, path=path))
        formats.add(fmt)
        files.extend(found)
    if len(formats) > 1:
        raise DataError(f"inputs mix formats {sorted(formats)}; prepare them separately or set --format")
    fmt = formats.pop()
    if fmt == "hub" and (len(inputs) > 1 or shard):
        raise DataError("a hub dataset is prepared alone and without --shard (shard local files instead)")
    if shard:
        files = files[shard[0]::shard[1]]
        if not files:
            raise DataError(f"--shard {shard[0]}/{shard[1]}: no files for this shard (shards take whole files)")
    return fmt, files


def prepare_corpus(inputs: list[str], tokenizer_name: str, output: str | Path, max_seq_len: int = 128,
                   num_proc: int = 1, shard: str | None = None, text_column: str = "text",
                   packing: str = "documents", corpus_format: str = "auto", overwrite: bool = False,
                   progress_bar: bool = True) -> Path:
    """Write a prepared corpus of `inputs` to `output`; returns `output`."""
    from datasets import Dataset

    from pipeline.models.loading import load_tokenizer

    if packing not in PACKING_MODES:
        raise ConfigError(f"--packing: one of {', '.join(PACKING_MODES)}, got {packing!r}")
    if num_proc < 1:
        raise ConfigError(f"--num-proc: must be >= 1, got {num_proc}")
    output = Path(output).expanduser()
    _output_checks(output, overwrite)
    cfg = CorpusConfig(path=inputs[0], format=corpus_format, text_column=text_column, max_seq_len=max_seq_len)
    shard_spec = parse_shard(shard)
    fmt, files = _sources(inputs, cfg, shard_spec)
    tokenizer = load_tokenizer(tokenizer_name, "tokenizer")
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.uint32

    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    try:
        rows = Dataset.from_generator(_rows, gen_kwargs={"fmt": fmt, "files": files, "cfg": cfg},
                                      cache_dir=str(work / "cache"))

        def tokenize(batch):
            texts = [t for t in batch["text"] if t]
            encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
            return {"ids": [next(encoded) if t else [] for t in batch["text"]],
                    "line": [bool(t) for t in batch["text"]]}

        tokenized = rows.map(tokenize, batched=True, batch_size=1000, num_proc=num_proc if num_proc > 1 else None,
                             remove_columns=["text"], desc="tokenising")
        counts = _write_rows(tokenized, work, tokenizer, max_seq_len, packing, dtype, progress_bar)
        shutil.rmtree(work / "cache")
        manifest = {
            "format": FORMAT, "version": VERSION,
            "tokenizer": {"name_or_path": tokenizer_name, "fingerprint": tokenizer_fingerprint(tokenizer),
                          "vocab_size": len(tokenizer), "pad_id": tokenizer.pad_token_id,
                          "cls_id": tokenizer.cls_token_id, "sep_id": tokenizer.sep_token_id},
            "max_seq_len": max_seq_len, "packing": packing, "dtype": np.dtype(dtype).name,
            "sources": inputs, "shard": shard, **counts,
            "shards": [{"tokens_file": "tokens-00000.bin", "lengths_file": "lengths-00000.bin",
                        "sequences": counts["sequences"], "tokens": counts["tokens"]}],
        }
        _publish(work, manifest, output)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return output


def _write_rows(tokenized, work: Path, tokenizer, max_seq_len: int, packing: str, dtype,
                progress_bar: bool) -> dict:
    """Pack the tokenised rows in order into tokens-00000.bin / lengths-00000.bin; returns the counts."""
    skipped, lines, documents = Counter(), 0, 0

    def token_lines():  # as the streaming reader's StreamingCorpus._token_lines
        nonlocal lines, documents
        in_document = False
        for chunk in tokenized.iter(batch_size=10_000):
            for bad, is_line, ids in zip(chunk["bad"], chunk["line"], chunk["ids"]):
                if bad:
                    skipped[bad] += 1
                if not is_line:
                    documents += in_document
                    in_document = False
                    yield None
                    continue
                if not ids:
                    skipped["no_tokens"] += 1
                lines += 1
                in_document = True
                yield ids
            bar.update(len(chunk["bad"]))
        documents += in_document

    sequences = tokens = 0
    rows = np.full((ROWS_PER_WRITE, max_seq_len), tokenizer.pad_token_id, dtype=dtype)
    lengths = np.zeros(ROWS_PER_WRITE, dtype=np.uint16)
    filled = 0
    with tqdm(total=len(tokenized), desc="packing", unit="lines", disable=not progress_bar) as bar, \
            open(work / "tokens-00000.bin", "wb") as token_file, open(work / "lengths-00000.bin", "wb") as length_file:
        def flush():
            token_file.write(rows[:filled].tobytes())
            length_file.write(lengths[:filled].tobytes())
            rows[:filled] = tokenizer.pad_token_id

        for sequence in pack(token_lines(), max_seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id, packing):
            rows[filled, : len(sequence)] = sequence
            lengths[filled] = len(sequence)
            filled += 1
            sequences += 1
            tokens += len(sequence)
            if filled == ROWS_PER_WRITE:
                flush()
                filled = 0
        flush()
    if sequences == 0:
        raise DataError(f"no usable text in the inputs (skipped lines: {dict(sorted(skipped.items())) or 'none'})")
    return {"sequences": sequences, "tokens": tokens, "lines": lines, "documents": documents,
            "skipped": dict(sorted(skipped.items()))}


def merge_corpus(output: str | Path, parts: list[str | Path], overwrite: bool = False) -> Path:
    """Join prepared shards (same tokenizer, length and packing) into one prepared corpus."""
    output = Path(output).expanduser()
    _output_checks(output, overwrite)
    if not parts:
        raise DataError("merge-corpus: no shards given")
    manifests = [read_manifest(p) for p in parts]
    first = manifests[0]
    for part, manifest in zip(parts, manifests):
        for key in ("max_seq_len", "packing", "dtype"):
            if manifest[key] != first[key]:
                raise DataError(f"{part}: {key} {manifest[key]!r} differs from {parts[0]}'s {first[key]!r}")
        if manifest["tokenizer"]["fingerprint"] != first["tokenizer"]["fingerprint"]:
            raise DataError(f"{part}: prepared with another tokenizer than {parts[0]}")
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    try:
        shards, skipped = [], Counter()
        for part, manifest in zip(parts, manifests):
            skipped.update(manifest["skipped"])
            for shard in manifest["shards"]:
                n = len(shards)
                entry = {**shard, "tokens_file": f"tokens-{n:05d}.bin", "lengths_file": f"lengths-{n:05d}.bin"}
                for key in ("tokens_file", "lengths_file"):
                    _link_or_copy(Path(part) / shard[key], work / entry[key])
                shards.append(entry)
        manifest = {**first, "sources": [s for m in manifests for s in m["sources"]], "shard": None,
                    "shards": shards, "skipped": dict(sorted(skipped.items())),
                    **{key: sum(m[key] for m in manifests) for key in ("sequences", "tokens", "lines", "documents")}}
        _publish(work, manifest, output)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return output


def _publish(work: Path, manifest: dict, output: Path) -> None:
    """Write the manifest last, then put the finished folder in place of `output` in one rename."""
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if output.exists():
        shutil.rmtree(output)
    os.replace(work, output)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)

