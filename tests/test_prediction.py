"""Prediction-layer terms: the Hinton soft/hard mix under each hard-weight schedule, and ensembles of
teachers (one teacher in a list, or the same teacher twice, is exactly the single teacher)."""

import math

import pytest
import torch

from pipeline.distill.prediction import PredictionLossConfig, hard_weight_at, prediction_terms

STUDENT = torch.tensor([[0.0, 0.0]])
TEACHER = torch.tensor([[0.0, math.log(3.0)]])
LABELS = torch.tensor([1])


@pytest.mark.parametrize("schedule, weights", [
    ("constant", {0.0: 0.5, 0.5: 0.5, 1.0: 0.5}),
    ("linear_decay", {0.0: 0.5, 0.5: 0.25, 1.0: 0.0}),
    ("linear_increase", {0.0: 0.0, 0.5: 0.25, 1.0: 0.5}),
])
def test_soft_and_hard_terms_mix_by_the_scheduled_hard_weight(schedule, weights):
    cfg = PredictionLossConfig(temperature=2.0, hard_weight=0.5, hard_schedule=schedule)
    # Uniform student: its log softmax is -ln 2 at any T, so soft CE = ln 2 * T^2 = 4 ln 2 and hard CE = ln 2.
    for progress, weight in weights.items():
        assert hard_weight_at(cfg, progress) == pytest.approx(weight)
        terms = prediction_terms(STUDENT, TEACHER, LABELS, "classification", cfg, progress)
        assert terms["soft_ce"].item() == pytest.approx(4 * math.log(2))
        assert terms["loss"].item() == pytest.approx(4 * math.log(2) + weight * math.log(2))
        assert ("hard_ce" in terms) == (weight > 0)


@pytest.mark.parametrize("kind", ["soft_ce", "mse"])
@pytest.mark.parametrize("mode", ["probabilities", "logits"])
def test_one_teacher_in_a_list_or_the_same_teacher_twice_is_bit_identical(kind, mode):
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    cfg = PredictionLossConfig(kind=kind, temperature=2.0, ensemble=mode)
    alone = prediction_terms(student, teacher, None, "classification", cfg, 0.0)["loss"]
    listed = prediction_terms(student, [teacher], None, "classification", cfg, 0.0)["loss"]
    twice = prediction_terms(student, [teacher, teacher.clone()], None, "classification", cfg, 0.0)["loss"]
    assert torch.equal(listed, alone) and torch.equal(twice, alone)


def test_ensemble_soft_target_per_mode():
    student = torch.zeros(1, 2)
    teachers = [torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[math.log(3.0), 0.0]])]
    # probabilities: mean of [1/4, 3/4] and [3/4, 1/4] is uniform; logits: mean logits are equal, also
    # uniform. Against a uniform student both give ln 2 at T = 1.
    for mode in ("probabilities", "logits"):
        cfg = PredictionLossConfig(ensemble=mode)
        assert prediction_terms(student, teachers, None, "classification", cfg, 0.0)["loss"].item() == \
            pytest.approx(math.log(2))
    # Different teachers, T = 2: the two rules give different targets, checked by hand.
    student = torch.tensor([[1.0, 0.0]])
    teachers = [torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 0.0]])]
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # softmax([a, 0])[0] = sigmoid(a)
    log_p_student = [math.log(sigmoid(0.5)), math.log(1 - sigmoid(0.5))]  # softmax([1, 0] / 2)
    by_probs = [(sigmoid(2.0) + 0.5) / 2, (1 - sigmoid(2.0) + 0.5) / 2]  # mean of softmax([2, 0]), softmax([0, 0])
    by_logits = [sigmoid(1.0), 1 - sigmoid(1.0)]  # softmax(mean logits [2, 0] / 2)
    for mode, target in (("probabilities", by_probs), ("logits", by_logits)):
        cfg = PredictionLossConfig(temperature=2.0, ensemble=mode)
        expected = -sum(q * lp for q, lp in zip(target, log_p_student)) * 4
        loss = prediction_terms(student, teachers, None, "classification", cfg, 0.0)["loss"]
        assert loss.item() == pytest.approx(expected, rel=1e-6), mode


def test_regression_ensemble_averages_the_teachers_predictions():
    student = torch.tensor([[1.0], [2.0]])
    teachers = [torch.tensor([[0.0], [2.0]]), torch.tensor([[2.0], [4.0]])]  # mean: [[1], [3]]
    terms = prediction_terms(student, teachers, None, "regression", PredictionLossConfig(), 0.0)
    assert terms["mse"].item() == pytest.approx((0.0 + 1.0) / 2)


def test_token_task_ensemble_averages_per_token_over_real_tokens():
    student = torch.zeros(1, 2, 2)
    teachers = [torch.tensor([[[0.0, math.log(3.0)], [9.0, 0.0]]]), torch.tensor([[[math.log(3.0), 0.0], [0.0, 9.0]]])]
    mask = torch.tensor([[1, 0]])
    terms = prediction_terms(student, teachers, None, "token", PredictionLossConfig(), 0.0, mask)
    assert terms["soft_ce"].item() == pytest.approx(math.log(2))


def test_qa_soft_ce_is_over_context_positions_for_start_and_end_by_hand():
    from pipeline.distill.prediction import PredictionLossConfig, prediction_terms

    # one window of 4 positions; position 2 is the question (not allowed). Student uniform over allowed.
    student = torch.zeros(1, 4, 2)
    teacher = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [50.0, 50.0], [0.0, math.log(3)]]])
    mask = torch.tensor([[1, 1, 0, 1]])
    cfg = PredictionLossConfig(temperature=1.0, hard_weight=0.5)
    labels = torch.tensor([[1, 3]])
    terms = prediction_terms(student, teacher, labels, "qa", cfg, 0.0, mask)
    # teacher start over (0, 1, 3): (1, 3, 1)/5; student uniform 1/3: soft CE = log 3 for start and end alike
    assert terms["soft_ce"].item() == pytest.approx(math.log(3), rel=1e-6)
    assert terms["hard_ce"].item() == pytest.approx(math.log(3), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(1.5 * math.log(3), rel=1e-6)
    # T = 2 scales by T^2 and softens the teacher: (1, sqrt 3, 1) / (2 + sqrt 3)
    soft = prediction_terms(student, teacher, None, "qa", PredictionLossConfig(temperature=2.0), 0.0, mask)
    assert soft["soft_ce"].item() == pytest.approx(4 * math.log(3), rel=1e-6)
