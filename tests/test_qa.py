"""Extractive QA: the official metrics by hand, window and offset alignment, span decoding."""

import numpy as np
import pytest
from conftest import save_tokenizer

from pipeline.errors import DataError
from pipeline.tasks.qa import (
    best_answers,
    check_answers,
    mixed_segmentation,
    qa_metrics,
    qa_windows,
    squad_normalize,
)


def test_squad_normalisation_and_scores_by_hand():
    assert squad_normalize("The  Eiffel Tower!") == "eiffel tower"
    # pred "eiffel tower in paris" vs gold "the eiffel tower": 2 common tokens; P = 2/4, R = 2/2, F1 = 2/3
    scores = qa_metrics(["Eiffel Tower in Paris"], [["the Eiffel Tower"]], "en")
    assert scores["exact_match"] == 0.0 and scores["f1"] == pytest.approx(2 / 3)
    # the best over the gold answers counts
    assert qa_metrics(["Paris"], [["in France", "paris."]], "en") == {"exact_match": 1.0, "f1": 1.0}


def test_cmrc_scores_by_hand():
    assert mixed_segmentation("北京大学2008年，Peking Univ!") == ["北", "京", "大", "学", "2008", "年", "peking",
                                                                  "univ"]
    # gold 北京大学 (4 units) vs prediction 在北京大学里 (6): common substring 4; P = 4/6, R = 1, F1 = 0.8
    scores = qa_metrics(["在北京大学里"], [["北京大学"]], "zh")
    assert scores["exact_match"] == 0.0 and scores["f1"] == pytest.approx(0.8)
    # punctuation does not count, for EM or F1
    assert qa_metrics(["《北京大学》。"], [["北京大学"]], "zh") == {"exact_match": 1.0, "f1": 1.0}
    # the longest common *substring*: 北大 vs 北京大学 share 北 or 大 alone: P = 1/2, R = 1/4, F1 = 1/3
    assert qa_metrics(["北大"], [["北京大学"]], "zh")["f1"] == pytest.approx(1 / 3)


def test_unanswerable_questions_score_only_an_empty_prediction():
    assert qa_metrics(["", "北京"], [[], []], "zh") == {"exact_match": 0.5, "f1": 0.5}
    assert qa_metrics([""], [["北京"]], "zh") == {"exact_match": 0.0, "f1": 0.0}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    texts = ["张伟在上海开了一家小餐馆，生意越来越好。", "文中提到了哪些人名？哪些地名？"]
    directory = tmp_path_factory.mktemp("qa_tokenizer")
    save_tokenizer(directory, texts)
    return AutoTokenizer.from_pretrained(directory)


def test_every_gold_answer_is_recovered_from_its_window_or_marked_absent(tokenizer):
    context = "张伟在上海开了一家小餐馆，生意越来越好。" * 3
    question = "哪些地名？"
    start = context.index("上海", 25)  # the second 上海
    answers = [{"text": ["上海"], "answer_start": [start]}]
    windows = qa_windows(tokenizer, [question], [context], answers, max_seq_len=24, doc_stride=8)
    assert len(windows["input_ids"]) > 2 and set(windows["window_example"]) == {0}
    found = 0
    for ids, offsets, s, e in zip(windows["input_ids"], windows["offsets"], windows["start_positions"],
                                  windows["end_positions"]):
        assert len(ids) <= 24
        inside = any(a <= start < b for a, b in offsets if a != -1) and any(
            a < start + 2 <= b for a, b in offsets if a != -1)
        if inside:
            assert context[offsets[s][0] : offsets[e][1]] == "上海"
            found += 1
        else:
            assert (s, e) == (0, 0)
    assert found >= 1


def test_position_mask_is_cls_and_context_only(tokenizer):
    windows = qa_windows(tokenizer, ["哪些人名？"], ["张伟在上海。"], None, max_seq_len=32, doc_stride=8)
    tokens = tokenizer.convert_ids_to_tokens(windows["input_ids"][0])
    kept = [t for t, m in zip(tokens, windows["position_mask"][0]) if m]
    assert kept == ["[CLS]", "张", "伟", "在", "上", "海", "。"]


def test_the_best_span_is_taken_over_all_windows_of_an_example():
    contexts = ["abcdef"]
    windows = [{"example_index": 0, "offsets": [(-1, -1), (0, 1), (1, 2), (2, 3), (-1, -1)]},
               {"example_index": 0, "offsets": [(-1, -1), (2, 3), (3, 4), (4, 6), (-1, -1)]}]
    starts = [np.array([0.0, 1.0, 0.0, 0.0, 9.0]), np.array([0.0, 0.0, 3.0, 0.0, 9.0])]
    ends = [np.array([0.0, 0.0, 2.0, 0.0, 9.0]), np.array([0.0, 0.0, 0.0, 4.0, 9.0])]
    # window 1: start 3 (d) + end 3 (ef) = 7 beats window 0's 1 + 2; [SEP]'s 9s are never a span
    assert best_answers(starts, ends, windows, contexts) == ["def"]
    # one-token spans only: window 1's last context token (start 0 + end 4) wins
    assert best_answers(starts, ends, windows, contexts, max_answer_len=1) == ["ef"]
    # v2: the [CLS] score (min over windows: 0) beats the best span (7) only with a threshold below -7
    assert best_answers(starts, ends, windows, contexts, null_threshold=-8.0) == [""]
    assert best_answers(starts, ends, windows, contexts, null_threshold=0.0) == ["def"]


@pytest.mark.parametrize("answers, message", [
    ([{"text": ["上海"], "answer_start": [0]}], r"answer_start 0 does not match the answer '上海'"),
    ([{"text": ["上海"]}], "answers needs 'text' and 'answer_start'"),
    ([{"text": ["上海"], "answer_start": [3, 4]}], "1 answer texts but 2 answer_start"),
])
def test_bad_answers_are_one_line_errors(answers, message):
    with pytest.raises(DataError, match=message):
        check_answers(["张伟在上海。"], answers, "train")
