"""Each loss against a small hand-computed case, masks included; every loss is 0 for equal inputs."""

import math

import pytest
import torch

from pipeline.distill.losses import (
    attention_kl,
    attention_mse,
    attention_pair_mask,
    average_heads,
    ensemble_targets,
    hard_cross_entropy,
    hidden_cosine,
    hidden_mse,
    logits_mse,
    masked_lm_loss,
    soft_cross_entropy,
    soft_cross_entropy_to_probs,
    soft_target_kl,
)


def test_hidden_mse_averages_over_real_tokens_and_width_only():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [90.0, 90.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # real tokens: (1^2 + 2^2) + (2^2 + 3^2) = 18, over 2 tokens x 2 dims; the padded token is ignored
    assert hidden_mse(student, teacher, mask).item() == pytest.approx(4.5)


def test_attention_mse_ignores_padded_key_columns_and_query_rows():
    student = torch.full((1, 2, 2, 2), 1e4)  # padded positions hold huge values: they must not count
    teacher = torch.full((1, 2, 2, 2), -1e4)
    student[0, 0, 0, 0], teacher[0, 0, 0, 0] = 1.0, 0.0
    student[0, 1, 0, 0], teacher[0, 1, 0, 0] = 3.0, 1.0
    mask = torch.tensor([[1, 0]])
    # one real (query, key) pair per head: (1 - 0)^2 and (3 - 1)^2, mean over 2 heads
    assert attention_mse(student, teacher, mask).item() == pytest.approx(2.5)


def test_attention_mse_counts_pairs_per_sequence_length():
    student = torch.zeros(2, 1, 3, 3)
    teacher = torch.zeros(2, 1, 3, 3)
    teacher[0] = 1.0  # every pair of sequence 0 differs by 1
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # 9 real pairs in sequence 0 with error 1, 1 real pair in sequence 1 with error 0 -> 9 / 10
    assert attention_mse(student, teacher, mask).item() == pytest.approx(0.9)


def test_attention_kl_softmaxes_over_real_keys_and_averages_real_rows():
    teacher = torch.zeros(1, 1, 3, 3)
    student = torch.zeros(1, 1, 3, 3)
    teacher[0, 0, 0] = torch.tensor([math.log(3.0), 0.0, 100.0])  # key 2 is padding: p_t = [3/4, 1/4, 0]
    student[0, 0, 0] = torch.tensor([0.0, 0.0, -50.0])  # p_s = [1/2, 1/2, 0]
    teacher[0, 0, 2] = torch.tensor([5.0, -5.0, 7.0])  # padded query row: ignored
    mask = torch.tensor([[1, 1, 0]])
    row0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    # row 1 is equal in both (all zeros) -> 0; mean over the 2 real rows of 1 head
    assert attention_kl(student, teacher, mask).item() == pytest.approx(row0 / 2, rel=1e-5)


def test_average_heads_allows_different_head_counts():
    teacher = torch.arange(16 * 4, dtype=torch.float).reshape(1, 16, 2, 2)
    student = teacher.reshape(1, 4, 4, 2, 2).mean(dim=2)  # groups of 4 heads averaged
    mask = torch.ones(1, 2, dtype=torch.long)
    assert attention_mse(average_heads(student), average_heads(teacher), mask).item() == pytest.approx(0.0, abs=1e-8)


def test_soft_cross_entropy_is_scaled_by_temperature_squared():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    # log softmax(student / T) = [-ln 2, -ln 2] for any T, so the CE is ln 2 before scaling
    assert soft_cross_entropy(student, teacher, temperature=1.0).item() == pytest.approx(math.log(2))
    assert soft_cross_entropy(student, teacher, temperature=2.0).item() == pytest.approx(4 * math.log(2))
    unscaled = soft_cross_entropy(student, teacher, temperature=2.0, scale_by_t2=False)
    assert unscaled.item() == pytest.approx(math.log(2))


def test_soft_cross_entropy_token_mask_excludes_padding():
    student = torch.tensor([[[0.0, 0.0], [9.0, -9.0]]])
    teacher = torch.tensor([[[0.0, math.log(3.0)], [-9.0, 9.0]]])
    mask = torch.tensor([[1, 0]])
    assert soft_cross_entropy(student, teacher, 1.0, mask=mask).item() == pytest.approx(math.log(2))


def test_soft_cross_entropy_matches_hand_computation_for_unequal_logits():
    student = torch.tensor([[1.0, 2.0, 0.5]])
    teacher = torch.tensor([[0.2, 0.1, 2.0]])
    t = 3.0
    p_teacher = [math.exp(v / t) for v in teacher[0].tolist()]
    p_teacher = [p / sum(p_teacher) for p in p_teacher]
    log_norm = math.log(sum(math.exp(v / t) for v in student[0].tolist()))
    expected = -sum(p * (s / t - log_norm) for p, s in zip(p_teacher, student[0].tolist())) * t * t
    assert soft_cross_entropy(student, teacher, temperature=t).item() == pytest.approx(expected, rel=1e-6)


def _softmax(values: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


def test_ensemble_targets_average_softened_probabilities_or_raw_logits():
    first = torch.tensor([[2.0, 0.0, -2.0]])
    second = torch.tensor([[0.0, 4.0, 0.0]])
    t = 2.0
    p1, p2 = _softmax([2.0, 0.0, -2.0], t), _softmax([0.0, 4.0, 0.0], t)
    expected = [(a + b) / 2 for a, b in zip(p1, p2)]
    probs = ensemble_targets([first, second], t, "probabilities")
    assert probs[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert ensemble_targets([first, second], t, "logits")[0].tolist() == [1.0, 2.0, -1.0]
    # The two rules differ: softmax of the mean logits is not the mean of the softmaxes.
    assert _softmax([1.0, 2.0, -1.0], t) != pytest.approx(expected, rel=1e-3)


def test_soft_cross_entropy_to_averaged_probabilities_matches_hand_computation():
    student = torch.tensor([[1.0, 2.0, 0.5]])
    teachers = [torch.tensor([[2.0, 0.0, -2.0]]), torch.tensor([[0.0, 4.0, 0.0]])]
    t = 2.0
    target = [(a + b) / 2 for a, b in zip(_softmax([2.0, 0.0, -2.0], t), _softmax([0.0, 4.0, 0.0], t))]
    log_p_student = [math.log(p) for p in _softmax([1.0, 2.0, 0.5], t)]
    expected = -sum(q * lp for q, lp in zip(target, log_p_student)) * t * t
    loss = soft_cross_entropy_to_probs(student, ensemble_targets(teachers, t, "probabilities"), t)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # logit averaging: the soft CE against softmax(mean logits / T)
    mean_target = _softmax([1.0, 2.0, -1.0], t)
    expected_logits = -sum(q * lp for q, lp in zip(mean_target, log_p_student)) * t * t
    loss = soft_cross_entropy(student, ensemble_targets(teachers, t, "logits"), t)
    assert loss.item() == pytest.approx(expected_logits, rel=1e-6)


def test_logits_mse_sums_classes_and_averages_examples():
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert logits_mse(student, teacher).item() == pytest.approx((5.0 + 4.0) / 2)


def test_hard_cross_entropy_skips_ignored_labels():
    logits = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    labels = torch.tensor([0, -100])
    assert hard_cross_entropy(logits, labels).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("loss", [hidden_mse, attention_mse, attention_kl])
def test_intermediate_losses_are_zero_for_equal_inputs(loss):
    torch.manual_seed(0)
    values = torch.randn(2, 3, 5, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    if loss is hidden_mse:
        values = values[:, 0]
    assert loss(values, values.clone(), mask).item() == pytest.approx(0.0, abs=1e-7)


def test_prediction_losses_are_zero_or_entropy_for_equal_inputs():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert logits_mse(logits, logits.clone()).item() == 0.0
    # soft CE against itself is the teacher's entropy (its KL part is 0)
    p = torch.softmax(logits, -1)
    entropy = -(p * p.log()).sum().item()
    assert soft_cross_entropy(logits, logits.clone()).item() == pytest.approx(entropy, rel=1e-6)


def test_soft_target_kl_is_scaled_by_temperature_squared_and_averages_masked_positions():
    # position 0: student uniform over 2 tokens, teacher [1/4, 3/4] at T=1; position 1 is not selected
    student = torch.tensor([[[0.0, 0.0], [9.0, -9.0]]])
    teacher = torch.tensor([[[0.0, math.log(3.0)], [-9.0, 9.0]]])
    mask = torch.tensor([[True, False]])
    kl_t1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert soft_target_kl(student, teacher, 1.0, mask).item() == pytest.approx(kl_t1, rel=1e-6)
    # at T=2 the teacher is softmax([0, ln 3] / 2) = [1, sqrt 3] / (1 + sqrt 3); the student stays uniform
    p = [1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))]
    kl_t2 = sum(q * math.log(q / 0.5) for q in p)
    assert soft_target_kl(student, teacher, 2.0, mask).item() == pytest.approx(4 * kl_t2, rel=1e-6)


def test_soft_target_kl_is_a_mean_over_selected_positions_across_the_batch():
    student = torch.zeros(2, 3, 2)
    teacher = torch.zeros(2, 3, 2)
    teacher[0, 1] = torch.tensor([0.0, math.log(3.0)])  # the only differing selected position
    teacher[1, 2] = torch.tensor([50.0, -50.0])  # differs, but not selected
    mask = torch.tensor([[True, True, False], [True, False, False]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert soft_target_kl(student, teacher, 1.0, mask).item() == pytest.approx(kl / 3, rel=1e-6)
    assert soft_target_kl(student, teacher, 1.0, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_hidden_cosine_averages_one_minus_cosine_over_real_tokens_only():
    student = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 3.0], [2.0, 2.0], [-5.0, -5.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: orthogonal -> 1; token 1: same direction, other length -> 0; token 2 (opposite) is padding
    assert hidden_cosine(student, teacher, mask).item() == pytest.approx(0.5, abs=1e-6)
    assert hidden_cosine(student, teacher, torch.ones(1, 3)).item() == pytest.approx(3.0 / 3, abs=1e-6)


def test_masked_lm_loss_averages_selected_positions():
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [9.0, -9.0]]])
    labels = torch.tensor([[0, 1, -100]])
    expected = (math.log(2) - math.log(0.75)) / 2
    assert masked_lm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_distilbert_losses_are_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    logits, hidden = torch.randn(2, 5, 11) * 4, torch.randn(2, 5, 8)
    selected = torch.rand(2, 5) < 0.5
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert soft_target_kl(logits, logits.clone(), 2.0, selected).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_cosine(hidden, hidden.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)


def test_losses_compute_in_float32_for_bfloat16_inputs():
    student = torch.ones(1, 2, 4, dtype=torch.bfloat16)
    teacher = torch.zeros(1, 2, 4, dtype=torch.bfloat16)
    result = hidden_mse(student, teacher, torch.ones(1, 2))
    assert result.dtype == torch.float32 and result.item() == 1.0


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_mse_gradient_equals_autograd_of_the_formula(dtype, padded):
    # The fused loss writes its gradient by hand: it must be autograd's gradient of the plain formula,
    # with padding and without (a packed batch, where the loss skips the mask).
    torch.manual_seed(0)
    student = (torch.randn(2, 3, 5, 5) * 3).to(dtype).requires_grad_()
    teacher = (torch.randn(2, 3, 5, 5) * 3).to(dtype)
    mask = torch.tensor([[1, 1, 1, 0 if padded else 1, 0 if padded else 1], [1, 1, 1, 1, 1]])
    attention_mse(student, teacher, mask).backward()
    fused = student.grad.clone()
    student.grad = None
    pairs = attention_pair_mask(mask)
    reference = (student.float() - teacher.float()).pow(2).masked_fill(~pairs, 0).sum() / (pairs.sum() * 3)
    reference.backward()
    assert reference.item() == pytest.approx(attention_mse(student, teacher, mask).item(), rel=1e-6)
    torch.testing.assert_close(fused, student.grad, rtol=1e-6, atol=1e-7)
    assert fused.dtype == dtype
    assert (fused[0, :, 3:, :].abs().sum() == 0 and fused[0, :, :, 3:].abs().sum() == 0) == padded


def test_attention_mse_reusing_the_student_scores_gives_the_same_gradient():
    # Captured scores are not leaves: backward may write the gradient over them, and must still be exact.
    torch.manual_seed(0)
    base = torch.randn(2, 3, 5, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 5, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    grads = []
    for reuse in (False, True):
        base.grad = None
        scores = base * 2.0  # a non-leaf, as the captured QK^T is
        value = attention_mse(scores, teacher, mask, reuse_student=reuse)
        value.backward()
        grads.append((value.item(), base.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])


def test_a_student_layer_mapped_to_two_teacher_layers_keeps_its_scores_for_both_terms():
    from pipeline.distill.intermediate import intermediate_loss_terms
    from pipeline.distill.layer_map import LayerMap
    from pipeline.schema import IntermediateLossConfig

    torch.manual_seed(0)
    base = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = {1: torch.randn(2, 3, 4, 4), 2: torch.randn(2, 3, 4, 4)}
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    hidden = tuple(torch.zeros(2, 4, 8) for _ in range(3))
    terms = intermediate_loss_terms({0: hidden[0], 1: hidden[0]}, {1: base * 1.0}, hidden, teacher,
                                    LayerMap(((1, 1), (1, 2)), embeddings=False),
                                    IntermediateLossConfig(embedding=0.0, hidden=0.0), mask)
    terms["loss"].backward()  # two terms read one student tensor: neither may overwrite it
    expected = base.detach().clone().requires_grad_()
    (attention_mse(expected * 1.0, teacher[1], mask) + attention_mse(expected * 1.0, teacher[2], mask)).backward()
    torch.testing.assert_close(base.grad, expected.grad)
