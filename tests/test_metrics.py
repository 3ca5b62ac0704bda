"""Each metric against a small hand-computed case, plus the edge cases that must raise or return 0."""

import numpy as np
import pytest

from pipeline.tasks.metrics import (
    accuracy,
    average_ranks,
    bio_entities,
    entity_f1,
    macro_f1,
    main_metric,
    matthews_corrcoef,
    pearson,
    spearman,
    task_metrics,
)

# 2x2 confusion: TP = 3, FN = 1, FP = 1, TN = 5
BINARY_LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
BINARY_PREDICTIONS = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]


def test_binary_confusion_metrics_match_hand_computation():
    assert accuracy(BINARY_PREDICTIONS, BINARY_LABELS) == pytest.approx(0.8)
    # class 1: P = R = 3/4 -> F1 0.75; class 0: P = R = 5/6 -> F1 5/6
    assert macro_f1(BINARY_PREDICTIONS, BINARY_LABELS, num_labels=2) == pytest.approx((0.75 + 5 / 6) / 2)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (15 - 1) / sqrt(4*4*6*6) = 14/24
    assert matthews_corrcoef(BINARY_PREDICTIONS, BINARY_LABELS) == pytest.approx(14 / 24)


def test_multiclass_mcc_uses_the_general_form():
    # c = 2 correct of s = 4; p = (1, 1, 2), t = (2, 1, 1): (2*4 - 5) / sqrt((16 - 6)(16 - 6)) = 0.3
    assert matthews_corrcoef([0, 2, 2, 1], [0, 1, 2, 0]) == pytest.approx(0.3)


def test_mcc_is_one_for_perfect_minus_one_for_inverted_and_zero_for_constant_predictions():
    labels = [0, 1, 1, 0]
    assert matthews_corrcoef(labels, labels) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 0, 1], labels) == pytest.approx(-1.0)
    assert matthews_corrcoef([1, 1, 1, 1], labels) == 0.0


def test_macro_f1_leaves_out_classes_that_never_occur():
    # class 2 of 3 is neither true nor predicted: the mean is over classes 0 and 1 only
    assert macro_f1([0, 1, 1], [0, 1, 0], num_labels=3) == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_macro_f1_rejects_class_ids_outside_num_labels():
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        macro_f1([0, 2], [0, 1], num_labels=2)


def test_pearson_of_known_vectors():
    # dx = (-2, -1, 0, 1, 2), dy = (-2, 0, 1, 0, 1): 6 / sqrt(10 * 6)
    assert pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(6 / np.sqrt(60))


def test_pearson_of_a_constant_vector_is_zero():
    assert pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0


def test_average_ranks_share_the_mean_rank_among_ties():
    np.testing.assert_allclose(average_ranks([30, 10, 20, 20, 10]), [5, 1.5, 3.5, 3.5, 1.5])


def test_spearman_with_ties_matches_hand_ranks():
    # ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4); dx = (-1.5, 0, 0, 1.5), dy = (-1.5, .5, -.5, 1.5)
    assert spearman([1, 2, 2, 3], [10, 30, 20, 40]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))


def test_spearman_ignores_the_scale_of_monotone_transforms():
    x = [0.1, 0.5, 0.2, 0.9]
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", [accuracy, pearson, spearman, matthews_corrcoef])
def test_empty_inputs_raise(metric):
    with pytest.raises(ValueError, match="empty"):
        metric([], [])


@pytest.mark.parametrize("metric", [accuracy, pearson, spearman, matthews_corrcoef])
def test_length_mismatch_raises(metric):
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        metric([1, 0, 1], [1, 0])


def test_bio_entities_are_type_start_and_exclusive_end():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert bio_entities(tags) == {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6)}


def test_i_tag_after_o_or_another_type_starts_an_entity_like_conlleval():
    assert bio_entities(["O", "I-PER", "I-PER", "O"]) == {("PER", 1, 3)}
    assert bio_entities(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}
    assert bio_entities(["I-ORG"]) == {("ORG", 0, 1)}


def test_bio_entities_rejects_malformed_tags():
    with pytest.raises(ValueError, match="'PER' at position 1"):
        bio_entities(["O", "PER"])


def test_entity_f1_counts_wrong_type_and_boundary_miss_as_errors():
    true = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "I-ORG", "O"]]
    # PER(0,2) correct; LOC(3,4) predicted as ORG; ORG(5,8) predicted as ORG(5,7): 1 of 3 either way
    result = entity_f1(true, pred)
    assert (result["correct"], result["pred_entities"], result["true_entities"]) == (1, 3, 3)
    assert result["precision"] == result["recall"] == result["f1"] == pytest.approx(1 / 3)
    assert result["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert result["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # ORG: 2 predicted, 1 true, none exact
    assert result["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_entity_f1_scores_the_i_after_o_case_as_an_entity():
    result = entity_f1([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]])
    assert result["f1"] == 1.0


def test_entity_f1_keeps_equal_spans_of_different_sentences_apart():
    result = entity_f1([["B-PER"], ["O"]], [["B-PER"], ["B-PER"]])
    assert (result["correct"], result["pred_entities"], result["true_entities"]) == (1, 2, 1)
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == 1.0


def test_entity_f1_rejects_empty_or_misaligned_input():
    with pytest.raises(ValueError, match="no sentences"):
        entity_f1([], [])
    with pytest.raises(ValueError, match="sentence 0 has 2 true tags but 1 predicted"):
        entity_f1([["O", "O"]], [["O"]])


def test_classification_task_metrics_add_mcc_for_binary_tasks_only():
    binary = task_metrics("classification", BINARY_PREDICTIONS, BINARY_LABELS, num_labels=2)
    assert set(binary) == {"accuracy", "macro_f1", "mcc"}
    three = task_metrics("classification", [0, 1, 2], [0, 1, 1], num_labels=3)
    assert set(three) == {"accuracy", "macro_f1"}
    with pytest.raises(ValueError, match="num_labels"):
        task_metrics("classification", [0, 1], [0, 1])


def test_regression_task_metrics_report_the_mean_correlation():
    result = task_metrics("regression", [1, 2, 3, 4, 5], [2, 4, 5, 4, 5])
    assert result["corr"] == pytest.approx((result["pearson"] + result["spearman"]) / 2)
    assert all(isinstance(value, float) for value in result.values())


def test_token_task_metrics_map_ids_to_tags_and_drop_ignored_positions():
    names = ["O", "B-PER", "I-PER"]
    labels = [[-100, 1, 2, 0, -100], [-100, 0, 1, -100]]
    predictions = [[0, 1, 2, 1, 2], [1, 0, 0, 2]]  # values at -100 positions must not matter
    result = task_metrics("token", predictions, labels, label_names=names)
    # kept: true [B-PER I-PER O] [O B-PER], predicted [B-PER I-PER B-PER] [O O]
    # entities: true PER(0,2), PER(1,2); predicted PER(0,2), PER(2,3) -> 1 of 2 either way
    assert result["entity_f1"] == pytest.approx(0.5)
    assert result["token_accuracy"] == pytest.approx(3 / 5)


def test_token_task_metrics_need_label_names_for_ids():
    with pytest.raises(ValueError, match="label_names"):
        task_metrics("token", [[0]], [[0]])


def test_main_metric_names_a_key_of_task_metrics():
    assert main_metric("classification") == "accuracy"
    assert main_metric("regression") == "corr"
    assert main_metric("token") == "entity_f1"
    assert main_metric("token") in task_metrics("token", [["B-X"]], [["B-X"]])
    with pytest.raises(ValueError, match="unknown task type 'ranking'"):
        main_metric("ranking")
