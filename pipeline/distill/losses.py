"""Distillation losses: pure functions, tensors in, scalar out, masks explicit.

Shapes: B batch, L sequence, D hidden width, H heads, C classes. `token_mask` is (B, L) with 1 for
real tokens and 0 for padding. Every loss is computed in float32, whatever the inputs' dtype, and is
exactly 0 when student and teacher inputs are equal (`hidden_cosine`: up to float rounding).

Masking is by the attention mask, never by thresholds on the values (TinyBERT zeroes scores <= -1e2,
TextBrewer every score <= -1e-3; both are wrong for some inputs, see the research notes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real tokens: sum_{b,t real} ||s_bt - t_bt||^2 / (n_real_tokens * D).

    Used for the embedding layer (student embeddings through W_e) and for each mapped Transformer
    layer (student layer m through W_h against teacher layer g(m)). Padding tokens contribute
    nothing, to the sum or to the count. Shapes: (B, L, D) and (B, L) -> scalar.
    """
    squared = (student.float() - teacher.float()).pow(2)
    mask = token_mask.to(squared.dtype).unsqueeze(-1)
    count = mask.sum() * squared.shape[-1]
    return (squared * mask).sum() / count.clamp_min(1.0)


def attention_pair_mask(token_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) boolean mask of (query, key) pairs where both positions are real tokens."""
    real = token_mask.bool()
    return (real[:, :, None] & real[:, None, :]).unsqueeze(1)


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, token_mask: torch.Tensor,
                  reuse_student: bool = False) -> torch.Tensor:
    """MSE between pre-softmax attention scores QK^T/sqrt(d), per head, averaged over heads.

    sum_{b,h,i,j} [i, j real] (s_bhij - t_bhij)^2 / (H * n_real_pairs), with n_real_pairs =
    sum_b len_b^2. Padded query rows and padded key columns are both excluded. This is TinyBERT's
    (1/h) sum_i MSE(A_i^S, A_i^T) (paper eq. 3) with explicit masks. Shapes: (B, H, L, L), (B, L).
    `reuse_student`: backward may write the gradient over `student` (fp32, not a leaf), saving a
    (B, H, L, L) tensor; only for scores that nothing else reads in backward (one loss term each).
    """
    pairs = None if bool(token_mask.all()) else attention_pair_mask(token_mask)  # packed batches: no padding
    count = (token_mask.sum(dim=-1).float().pow(2).sum() * student.shape[1]).clamp_min(1.0)
    return _MaskedSquaredError.apply(student, teacher, pairs, count, reuse_student)


CHUNK_ELEMENTS = 4 * 2**20  # below glibc's 32 MB mmap ceiling, so the chunks' memory is reused, not faulted in


class _MaskedSquaredError(torch.autograd.Function):
    """sum((s - t)^2 over `pairs`) / count, with its gradient 2 (s - t) [pair] / count written directly
    (`pairs` None: every pair counts).

    The forward sums a few sequences at a time, so its differences come from memory the allocator
    reuses; backward writes the gradient in place over the student's captured fp32 scores, which the
    attention path no longer needs (softmax keeps its output, the QK^T matmul its inputs). Autograd's
    composition of sub, pow, masked_fill and sum makes and keeps several full-size tensors, each fresh
    pages on a CPU (faulted in on first write), and the attention loss runs on every mapped layer of
    every step. Nothing beyond the inputs is kept for backward.
    """

    @staticmethod
    def forward(ctx, student, teacher, pairs, count, reuse_student):
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        step = max(1, CHUNK_ELEMENTS // student[0].numel())  # whole sequences, about 16 MB of floats at a time
        for b in range(0, student.shape[0], step):
            diff = student[b:b + step].float() - teacher[b:b + step].float()
            if pairs is not None:
                diff.masked_fill_(~pairs[b:b + step], 0.0)
            flat = diff.view(-1)
            total += torch.dot(flat, flat)
        ctx.save_for_backward(student, teacher, pairs if pairs is not None else torch.empty(0), count)
        ctx.reuse_student = reuse_student
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        student, teacher, pairs, count = ctx.saved_tensors
        if ctx.reuse_student and student.grad_fn is not None and student.dtype == torch.float32:
            # captured scores that nothing else needs in backward: their storage becomes the gradient (had
            # another node saved them, its version check would fail loudly, never silently)
            grad = student.sub_(teacher.float())
        else:  # a leaf (a test's tensor) or another dtype: a new tensor
            grad = student.float() - teacher.float()
        if pairs.numel():
            grad.masked_fill_(~pairs, 0.0)
        grad.mul_(2.0 * grad_output / count)
        grad_student = grad.to(student.dtype) if ctx.needs_input_grad[0] else None
        grad_teacher = (-grad).to(teacher.dtype) if ctx.needs_input_grad[1] else None
        return grad_student, grad_teacher, None, None, None


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention distributions, averaged over heads and real queries.

    Both inputs are pre-softmax scores; the softmax runs over real keys only, so padded keys get
    probability 0. Per row: sum_j p_t(j) (log p_t(j) - log p_s(j)); the result is the mean over real
    query rows and heads (nats). Shapes: (B, H, L, L), (B, L) -> scalar.
    """
    pairs = attention_pair_mask(token_mask)
    key_real = token_mask.bool()[:, None, None, :]
    floor = torch.finfo(torch.float32).min
    log_p_student = F.log_softmax(student.float().masked_fill(~key_real, floor), dim=-1)
    log_p_teacher = F.log_softmax(teacher.float().masked_fill(~key_real, floor), dim=-1)
    pointwise = log_p_teacher.exp() * (log_p_teacher - log_p_student)
    pointwise = pointwise.masked_fill(~pairs, 0.0)
    rows = token_mask.sum() * student.shape[1]
    return pointwise.sum() / rows.clamp_min(1)


def relation_scores(vectors: torch.Tensor, relation_heads: int) -> torch.Tensor:
    """MiniLMv2 self-attention relation scores (Wang et al. 2021, eq. 4): the per-head vectors of one
    kind (queries, keys or values; (B, H, L, d)) are concatenated to (B, L, H*d), split into R relation
    heads of d_r = H*d / R, and each head gives X_r X_r^T / sqrt(d_r). -> (B, R, L, L) pre-softmax."""
    batch, heads, length, width = vectors.shape
    d_r = heads * width // relation_heads
    split = vectors.float().transpose(1, 2).reshape(batch, length, relation_heads, d_r).transpose(1, 2)
    return torch.matmul(split, split.transpose(-1, -2)) / d_r**0.5


def relation_kl(student: torch.Tensor, teacher: torch.Tensor, token_mask: torch.Tensor,
                relation_heads: int) -> torch.Tensor:
    """KL(teacher relation || student relation) for one kind of vector (MiniLMv2 eq. 5): `attention_kl`
    of the two `relation_scores`, so padded keys are out of both softmaxes and the mean runs over
    relation heads and real query positions. Head counts and widths of the two sides may differ;
    both widths must divide by `relation_heads`. Shapes: (B, H_s, L, d_s), (B, H_t, L, d_t), (B, L)."""
    return attention_kl(relation_scores(student, relation_heads), relation_scores(teacher, relation_heads),
                        token_mask)


def average_heads(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, L, L) -> (B, 1, L, L): the head-averaged map, for teachers and students whose head
    counts differ (e.g. BERT-large's 16 heads against TinyBERT's 12)."""
    return scores.mean(dim=1, keepdim=True)


def soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    scale_by_t2: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft cross-entropy -sum_c softmax(z_T/T)_c log softmax(z_S/T)_c, mean over examples (or tokens).

    Multiplied by T^2 when `scale_by_t2` (Hinton et al. 2015: keeps the gradient scale independent of
    T). `scale_by_t2=False` gives TinyBERT's form at T=1, except that TinyBERT also divides by the
    number of classes; we do not. Logits (..., C); `mask` (...) selects real tokens for token tasks.
    """
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return soft_cross_entropy_to_probs(student_logits, p_teacher, temperature, scale_by_t2, mask)


def soft_cross_entropy_to_probs(
    student_logits: torch.Tensor,
    target_probs: torch.Tensor,
    temperature: float = 1.0,
    scale_by_t2: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """-sum_c q_c log softmax(z_S/T)_c against given target probabilities q, mean over examples (or
    tokens), times T^2 when `scale_by_t2`. `soft_cross_entropy` is this with q = softmax(z_T/T); an
    ensemble passes the teachers' averaged softened probabilities (`ensemble_targets`)."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_item = -(target_probs.float() * log_p_student).sum(dim=-1)
    loss = _masked_mean(per_item, mask)
    return loss * temperature**2 if scale_by_t2 else loss


def ensemble_targets(teacher_logits: list[torch.Tensor], temperature: float, mode: str) -> torch.Tensor:
    """The soft target of K teachers (MT-DNN style ensemble, Liu et al. 2019), each (..., C).

    mode `probabilities`: q = (1/K) sum_k softmax(z_k/T), softened probabilities (use with
    `soft_cross_entropy_to_probs`); mode `logits`: z = (1/K) sum_k z_k, raw logits (use with
    `soft_cross_entropy` or `logits_mse`; for regression heads this is the mean prediction).
    Computed in float32; with K = 1 it is softmax(z_1/T), resp. z_1, exactly.
    """
    stacked = torch.stack([logits.float() for logits in teacher_logits])
    if mode == "probabilities":
        return F.softmax(stacked / temperature, dim=-1).mean(dim=0)
    if mode == "logits":
        return stacked.mean(dim=0)
    raise ValueError(f"ensemble mode must be 'probabilities' or 'logits', got {mode!r}")


def logits_mse(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared distance between logits, sum over classes, mean over examples (Tang et al. 2019):
    mean_b ||z_S - z_T||^2. Also the regression loss against a teacher's prediction (C = 1)."""
    per_item = (student_logits.float() - teacher_logits.float()).pow(2).sum(dim=-1)
    return _masked_mean(per_item, mask)


def hard_cross_entropy(
    student_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Ordinary cross-entropy against gold labels, mean over labelled items (ignore_index skipped)."""
    return F.cross_entropy(
        student_logits.float().reshape(-1, student_logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=ignore_index,
    )


def soft_target_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, mask: torch.Tensor
) -> torch.Tensor:
    """DistilBERT's soft-target loss: KL(p_T || p_S) at temperature T, mean over the `mask`ed positions, x T^2.

    T^2 * sum_{i in mask} sum_v p_T(v|i) (log p_T(v|i) - log p_S(v|i)) / n_mask, with p = softmax(z / T)
    over the vocabulary. This is DistilBERT's KLDivLoss(reduction="batchmean") x T^2 on the positions
    selected for MLM (Sanh et al. 2019, sec. 2; `distiller.py`); it differs from the soft cross-entropy
    only by the teacher's entropy, a constant, and is exactly 0 when the logits are equal. Logits
    (B, L, V); `mask` (B, L), true at the positions to distil. No position selected gives 0.
    """
    selected = mask.bool()
    log_p_student = F.log_softmax(student_logits[selected].float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits[selected].float() / temperature, dim=-1)
    per_position = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
    return per_position.sum() / selected.sum().clamp_min(1) * temperature**2


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """DistilBERT's cosine embedding loss between last hidden states: mean over real tokens of 1 - cos.

    sum_{b,t real} (1 - <s_bt, t_bt> / (||s_bt|| ||t_bt||)) / n_real_tokens (Sanh et al. 2019, sec. 2:
    "aligns the directions of the student and teacher hidden states vectors"). Both (B, L, D) with the
    same D; padding contributes nothing. Scale: 0 (same direction) to 2 (opposite).
    """
    cosine = F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
    mask = token_mask.to(cosine.dtype)
    return ((1.0 - cosine) * mask).sum() / mask.sum().clamp_min(1.0)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Masked-LM cross-entropy (Devlin et al. 2019): mean over the selected positions only.

    (B, L, V) logits and (B, L) labels holding the original token id where a position was selected
    for prediction and `ignore_index` elsewhere. A batch with no selected position gives 0, not NaN.
    """
    selected = labels != ignore_index
    picked = F.cross_entropy(logits[selected].float(), labels[selected], reduction="sum")
    return picked / selected.sum().clamp_min(1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)
