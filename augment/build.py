"""`tinydistill augment`: a task dataset in, an augmented transfer set out.

    tinydistill augment configs/augment_reviews_zh.yaml [key=value ...] [--shard i/n] [--overwrite]

A run (1) loads and checks the config's resources (lexicon, vectors, dictionary, MLM) and the dataset
before any compute, (2) segments each text once (`datasets.map`, batched, `num_proc` workers), (3) builds
one candidate table for the replaceable vocabulary (dictionary + vector neighbours, one batched matrix
product), (4) draws the variants (`datasets.map` again, MLM fillers batched per map batch), and (5) saves
the transfer set as Arrow (`dataset/`, `save_to_disk`) and/or JSONL (`transfer.jsonl`) with
`stats.json` and `resolved_config.yaml`. Data stays memory-mapped Arrow on disk throughout, so 10M
examples need no more memory than their vocabulary. Output schema: see `augment.generate`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

from augment.candidates import CandidateFilter, dictionary_table, load_synonym_dictionary, merge_tables
from augment.config import AugmentConfig, parse_shard
from augment.generate import HIDDEN_COLUMNS, SegmentBatch, VariantBuilder, word_columns
from augment.io import check_columns, make_temp_dir, publish, refuse_finished
from augment.lexicon import load_pos_lexicon
from augment.mlm import MaskedLMFiller
from augment.stats import count_rows, summarise
from augment.vectors import load_word_vectors, neighbour_table
from augment.words import Eligibility, Segmenter, WordTagger, detect_language, load_stopwords
from pipeline.config import atomic_write_text, dump_yaml, write_resolved_config
from pipeline.data.dataset_files import load_input, shard_range
from pipeline.errors import DataError

__all__ = ["AugmentConfig", "run_augment"]

PROVENANCE_COLUMNS = ("source_index", "variant", "augmented", "n_masked", "n_replaced", "ngram")


def run_augment(cfg: AugmentConfig) -> Path:
    """Build the transfer set described by `cfg`; returns the finished output folder."""
    output_dir = Path(cfg.output_dir)
    refuse_finished(output_dir, cfg.overwrite)
    resources = _load_resources(cfg)
    temp_dir = make_temp_dir(output_dir)
    try:
        _build(cfg, resources, temp_dir)
        shutil.rmtree(temp_dir / "cache", ignore_errors=True)
        return publish(temp_dir, output_dir)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _load_resources(cfg: AugmentConfig) -> dict:
    """Everything read from files other than the dataset, so a bad path fails before any compute."""
    c = cfg.candidates
    mlm = None
    if c.mlm is not None:
        language = cfg.language if cfg.language != "auto" else "zh"
        mlm = MaskedLMFiller(c.mlm.model, language, c.mlm.batch_size, c.mlm.max_length).load()
    return {
        "lexicon": load_pos_lexicon(cfg.words.pos_lexicon) if cfg.words.pos_lexicon else None,
        "stopwords": load_stopwords(cfg.words.stopwords) if cfg.words.stopwords else frozenset(),
        "vectors": load_word_vectors(c.vectors.path, c.vectors.format, c.vectors.limit)
        if c.vectors
        else None,
        "dictionary": load_synonym_dictionary(c.dictionary.path, c.dictionary.format)
        if c.dictionary
        else None,
        "mlm": mlm,
    }


def _build(cfg: AugmentConfig, resources: dict, temp_dir: Path) -> None:
    cache = temp_dir / "cache"
    cols = cfg.columns
    # Downloads and file conversions go to the standard HF_DATASETS_CACHE and are kept between runs;
    # `cache` holds only this build's own work files (removed when it is published).
    dataset = load_input(cfg.input.path, cfg.input.format, cfg.input.split, cfg.input.name)
    check_columns(
        dataset,
        {
            "text": cols.text,
            "text_pair": cols.text_pair,
            "label": cols.label,
            "tokens": cols.tokens,
            "tags": cols.tags,
        },
        cfg.input.path,
    )
    clash = sorted(set(dataset.column_names) & {*PROVENANCE_COLUMNS, *HIDDEN_COLUMNS})
    if clash:
        raise DataError(
            f"input.path: column {clash[0]!r} clashes with a provenance column of the transfer set"
        )
    offset = 0
    if cfg.shard is not None:
        rows = shard_range(len(dataset), *parse_shard(cfg.shard))
        dataset, offset = dataset.select(rows), rows.start
    text_columns = cols.text_columns
    language = cfg.language
    if language == "auto":
        sample = dataset.select(range(min(200, len(dataset))))[text_columns[0]]
        language = detect_language(
            " ".join(map(str, t)) if isinstance(t, list) else str(t or "") for t in sample
        )
    if resources["mlm"] is not None:
        resources["mlm"].language = language

    tagger = WordTagger(language, resources["lexicon"])
    segmenter = Segmenter(tagger, cfg.ops.mask_token, cfg.words.hmm)
    eligibility = Eligibility(language, cfg.words.replaceable_tags, resources["stopwords"])
    accept = CandidateFilter(tagger, eligibility.replaceable)
    fingerprint = hashlib.sha256(dump_yaml(cfg).encode()).hexdigest()[:16]
    map_args = {
        "batched": True,
        "batch_size": cfg.batch_size,
        "num_proc": cfg.num_proc if cfg.num_proc > 1 else None,
    }

    segmented = dataset.map(
        SegmentBatch(segmenter, text_columns, cols.tokens is not None),
        **map_args,
        cache_file_name=str(cache / "segmented.arrow"),
        new_fingerprint=f"{fingerprint}-seg",
        desc="segmenting",
    )
    vocabulary = _replaceable_vocabulary(segmented, len(text_columns), eligibility)
    tables = {}
    if resources["dictionary"] is not None:
        tables["dictionary"] = dictionary_table(resources["dictionary"], vocabulary, accept)
    if resources["vectors"] is not None:
        v = cfg.candidates.vectors
        tables["vectors"] = neighbour_table(
            resources["vectors"], vocabulary, v.top_k, v.min_similarity, accept
        )
    table_coverage = {name: sum(n for w, n in vocabulary.items() if w in t) for name, t in tables.items()}

    builder = VariantBuilder(
        language=language,
        text_columns=text_columns,
        label_column=cols.label,
        tags_column=cols.tags,
        outside_tag=cols.outside_tag,
        ops=cfg.ops,
        seed=cfg.seed,
        offset=offset,
        table=merge_tables(tables.values()),
        eligibility=eligibility,
        accept=accept,
        mlm=resources["mlm"],
        mlm_top_k=cfg.candidates.mlm.top_k if cfg.candidates.mlm else 0,
        keep_words=cfg.output.keep_words,
    )
    generated = segmented.map(
        builder,
        with_indices=True,
        remove_columns=segmented.column_names,
        **map_args,
        cache_file_name=str(cache / "variants.arrow"),
        new_fingerprint=f"{fingerprint}-var",
        desc="augmenting",
    )
    counts = count_rows(generated, len(dataset))
    counts["eligible_words_table"] = sum(vocabulary.values())
    counts["covered_by"] = table_coverage
    transfer = generated.remove_columns(list(HIDDEN_COLUMNS))
    if "arrow" in cfg.output.formats:
        transfer.save_to_disk(str(temp_dir / "dataset"))
    if "jsonl" in cfg.output.formats:
        transfer.to_json(str(temp_dir / "transfer.jsonl"), lines=True, force_ascii=False)
    facts = {
        "language": language,
        "shard": cfg.shard,
        "input_rows": [offset, offset + len(dataset)],
        "sources": [name for name in ("dictionary", "vectors", "mlm") if getattr(cfg.candidates, name)],
    }
    atomic_write_text(
        temp_dir / "stats.json", json.dumps(summarise(counts, facts), ensure_ascii=False, indent=2)
    )
    write_resolved_config(cfg, temp_dir)


def _replaceable_vocabulary(segmented, n_sides: int, eligibility: Eligibility) -> Counter:
    """Occurrences of every replaceable word: the vocabulary the candidate table is built for."""
    vocabulary: Counter = Counter()
    columns = [c for pair in word_columns(n_sides) for c in pair]
    for batch in segmented.select_columns(columns).iter(batch_size=4096):
        for words_col, tags_col in word_columns(n_sides):
            for words, tags in zip(batch[words_col], batch[tags_col]):
                vocabulary.update(w for w, t in zip(words, tags) if eligibility.replaceable(w, t))
    return vocabulary
