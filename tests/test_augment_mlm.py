"""Whole-word MLM candidates from a tiny random BertForMaskedLM (the mechanics, not the quality)."""

import re

import pytest

from augment.mlm import MaskedLMFiller
from pipeline.errors import ModelError
from tests.augment_helpers import SENTENCES_ZH, tiny_masked_lm

CJK = re.compile(r"^[\u4e00-\u9fff]+$")


@pytest.fixture(scope="module")
def filler(tmp_path_factory):
    model = tiny_masked_lm(tmp_path_factory.mktemp("mlm"), SENTENCES_ZH)
    return MaskedLMFiller(str(model), "zh", batch_size=8, max_length=64).load()


def test_a_k_character_word_is_masked_as_k_masks(filler):
    words = ["这本书", "的", "内容", "很", "精彩"]
    ids, start, k = filler.encode(words, 4)
    tokens = filler.tokenizer.convert_ids_to_tokens(ids)
    assert k == 2
    assert tokens == ["[CLS]", "这", "本", "书", "的", "内", "容", "很", "[MASK]", "[MASK]", "[SEP]"]
    assert tokens[start : start + k] == ["[MASK]", "[MASK]"]


def test_fillers_are_whole_words_of_the_masked_length(filler):
    requests = [
        (["这本书", "的", "内容", "很", "精彩"], 4),
        (["房间", "很", "干净"], 0),
        (["价格", "实惠"], 1),
    ]
    results = filler.fill(requests, top_k=5)
    for (words, position), fillers in zip(requests, results):
        assert len(fillers) == 5
        assert len(set(fillers)) == 5
        assert all(CJK.match(f) and len(f) == len(words[position]) for f in fillers)
        assert words[position] not in fillers


def test_batched_fill_equals_one_forward_per_word(filler, monkeypatch):
    # A padded batch and a lone forward differ by rounding, so two fillers whose scores tie that closely
    # may swap places: compare each rank's score under the lone forward's log-probabilities, not names.
    requests = [(["房间", "很", "干净", "，", "服务", "周到"], p) for p in (0, 2, 4, 5)]
    requests += [(["这本书", "的", "内容", "很", "精彩"], 4)]
    batched = filler.fill(requests, top_k=4)
    lone_log_probs, real_beam = [], filler._beam

    def recording_beam(log_probs, beam):
        lone_log_probs.append(log_probs)
        return real_beam(log_probs, beam)

    monkeypatch.setattr(filler, "_beam", recording_beam)
    one_by_one = [filler.fill([r], top_k=4)[0] for r in requests]

    def score(log_probs, word):
        return sum(float(log_probs[j, piece]) for j, piece in enumerate(filler.pieces(word)))

    for fillers, lone, log_probs in zip(batched, one_by_one, lone_log_probs, strict=True):
        assert len(fillers) == len(lone) == 4 and len(set(fillers)) == 4
        assert [score(log_probs, w) for w in fillers] == pytest.approx(
            [score(log_probs, w) for w in lone], abs=1e-4)


def test_long_inputs_are_cut_around_the_mask(filler):
    words = list("这家酒店的房间很干净服务也非常周到下次还会再来") * 10
    ids, start, k = filler.encode(words, 100)
    assert len(ids) <= 64
    assert ids[start] == filler.tokenizer.mask_token_id and k == 1


def test_missing_model_is_one_line_error(tmp_path):
    with pytest.raises(ModelError, match=r"candidates\.mlm\.model: cannot load"):
        MaskedLMFiller(str(tmp_path / "nope"), "zh").load()


def test_head_on_masked_positions_equals_the_full_forward(filler):
    import torch

    ids, start, k = filler.encode(["房间", "很", "干净"], 2)
    input_ids = torch.tensor([ids])
    attention = torch.ones_like(input_ids)
    with torch.inference_mode():
        full = filler._model(input_ids=input_ids, attention_mask=attention).logits[0, start : start + k]
        masked_only = filler._mask_logits(input_ids, attention, [0] * k, list(range(start, start + k)))
    torch.testing.assert_close(masked_only, full)
