"""Captured scores are QK^T/sqrt(d) of the watched layers only; outputs and gradients stay sdpa's."""

import copy

import torch
import transformers.integrations.sdpa_attention as sdpa_module
from transformers import AutoModel

from pipeline.distill.capture import capture_attention_scores
from pipeline.distill.intermediate import intermediate_loss_terms, teacher_features
from pipeline.distill.layer_map import LayerMap
from pipeline.distill.losses import attention_pair_mask
from pipeline.distill.projections import Projections
from pipeline.schema import IntermediateLossConfig


def _batch():
    input_ids = torch.tensor([[2, 7, 8, 9, 10, 3], [2, 11, 12, 3, 0, 0]])
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(),
            "token_type_ids": torch.zeros_like(input_ids)}


def test_captured_scores_equal_manual_qk_over_sqrt_d(teacher_dir):
    model = AutoModel.from_pretrained(teacher_dir, attn_implementation="sdpa").eval()
    batch = _batch()
    with torch.no_grad(), capture_attention_scores(model, [2]) as captured:
        outputs = model(**batch, output_hidden_states=True)
    attention = model.encoder.layer[1].attention.self
    hidden = outputs.hidden_states[1]  # the input of layer 2
    heads, width = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads

    def split(x):
        return x.view(x.shape[0], x.shape[1], heads, width).transpose(1, 2)

    manual = split(attention.query(hidden)) @ split(attention.key(hidden)).transpose(-1, -2) / width**0.5
    assert set(captured) == {2}
    torch.testing.assert_close(captured[2], manual, rtol=1e-5, atol=1e-6)

    # With the additive mask and a softmax they are exactly eager attention's probabilities.
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        probabilities = eager(**batch, output_attentions=True).attentions[1]
    pairs = attention_pair_mask(batch["attention_mask"])
    additive = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    from_capture = torch.softmax(captured[2] + additive, dim=-1)
    torch.testing.assert_close(from_capture.masked_fill(~pairs, 0), probabilities.masked_fill(~pairs, 0),
                               rtol=1e-5, atol=1e-6)


def _counting_sdpa(monkeypatch) -> list:
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(sdpa_module.torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    return calls


# Attention dropout so small that no weight is ever dropped: a CPU training pass that runs the dropout
# code path (sdpa's unfused math kernel, or the watched layers' own eager attention) deterministically.
NO_DROP = {"attention_probs_dropout_prob": 1e-12}


def test_every_layer_runs_sdpa_where_it_is_fused_and_outputs_are_unchanged(teacher_dir, monkeypatch):
    # eval (a frozen teacher): sdpa is the fused kernel, and the watched layers' scores are one extra QK^T
    model = AutoModel.from_pretrained(teacher_dir, attn_implementation="sdpa").eval()
    batch = _batch()
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
    calls = _counting_sdpa(monkeypatch)
    with torch.no_grad(), capture_attention_scores(model, [1, 3]) as captured:
        captured_run = model(**batch).last_hidden_state
    assert len(calls) == model.config.num_hidden_layers
    assert sorted(captured) == [1, 3]
    torch.testing.assert_close(captured_run, reference)
    assert model.config._attn_implementation == "sdpa"  # restored on exit


def test_watched_layers_of_a_cpu_training_pass_with_dropout_attend_with_their_own_scores(teacher_dir, monkeypatch):
    model = AutoModel.from_pretrained(teacher_dir, attn_implementation="sdpa", **NO_DROP).train()
    batch = _batch()
    reference = model(**batch).last_hidden_state
    calls = _counting_sdpa(monkeypatch)
    with capture_attention_scores(model, [1, 3]):
        captured_run = model(**batch).last_hidden_state
    assert len(calls) == model.config.num_hidden_layers - 2
    torch.testing.assert_close(captured_run, reference)


def test_watched_layers_give_sdpa_gradients(teacher_dir):
    # Both attention paths of a watched layer must backpropagate as sdpa does, padding included.
    batch = _batch()
    for mode in ("eval", "train"):
        grads = []
        for watched in ([], [1, 2, 3, 4]):
            model = AutoModel.from_pretrained(teacher_dir, attn_implementation="sdpa", **NO_DROP)
            getattr(model, mode)()
            with capture_attention_scores(model, watched):
                model(**batch).last_hidden_state.pow(2).mean().backward()
            grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
        assert grads[0].keys() == grads[1].keys()
        for name in grads[0]:
            torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=f"{mode} {name}")


def test_captured_student_scores_carry_gradients(teacher_dir):
    model = AutoModel.from_pretrained(teacher_dir, attn_implementation="sdpa")
    with capture_attention_scores(model, [4]) as captured:
        model(**_batch())
    captured[4].sum().backward()
    query_weight = model.encoder.layer[3].attention.self.query.weight
    assert query_weight.grad is not None and query_weight.grad.abs().sum() > 0


def test_every_intermediate_term_is_zero_when_student_equals_teacher(teacher_dir):
    teacher = AutoModel.from_pretrained(teacher_dir, attn_implementation="sdpa").eval()
    student = copy.deepcopy(teacher)
    depth = teacher.config.num_hidden_layers
    layer_map = LayerMap(tuple((m, m) for m in range(1, depth + 1)), embeddings=True)
    width = teacher.config.hidden_size
    projections = Projections(width, width, layer_map.student_layers, linear=False)
    batch = _batch()
    loss_cfgs = [IntermediateLossConfig(), IntermediateLossConfig(attention_loss="kl", attention_heads="average")]
    with capture_attention_scores(teacher, layer_map.teacher_layers) as t_scores, \
            capture_attention_scores(student, layer_map.student_layers) as s_scores:
        teacher_hidden, teacher_captured = teacher_features(teacher, batch, t_scores)
        outputs = student(**batch, output_hidden_states=True)
        projected = {0: projections.project_embeddings(outputs.hidden_states[0])}
        projected.update({m: projections.project_hidden(m, outputs.hidden_states[m]) for m in range(1, depth + 1)})
        for loss_cfg in loss_cfgs:
            terms = intermediate_loss_terms(projected, dict(s_scores), teacher_hidden, teacher_captured,
                                            layer_map, loss_cfg, batch["attention_mask"])
            assert set(terms) == {"embedding", "hidden", "attention", "loss"}
            for name, value in terms.items():
                assert abs(value.item()) < 1e-6, name
