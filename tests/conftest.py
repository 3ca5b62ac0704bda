"""Tiny random BERTs built in-process and saved to tmp dirs, so tests go through the real loading code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHINESE_SENTENCES = [
    "这家酒店的服务很好，房间干净，早餐也不错。",
    "房间太小了，隔音很差，晚上根本睡不着。",
    "这本书写得非常精彩，值得一读再读。",
    "电脑的屏幕很清楚，但是电池不耐用。",
    "前台的态度很冷淡，以后不会再来了。",
    "位置方便，离地铁站很近，出行方便。",
    "价格便宜，性价比很高，推荐给大家。",
    "快递很快，包装完好，东西质量不错。",
]


def char_vocab(texts: list[str]) -> list[str]:
    chars = sorted({ch for text in texts for ch in text if not ch.isspace()})
    return SPECIAL_TOKENS + chars


def save_tokenizer(directory: Path, texts: list[str]) -> BertTokenizer:
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(char_vocab(texts)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab_file))
    tokenizer.save_pretrained(directory)
    return tokenizer


def make_bert(directory: Path, *, layers: int = 4, hidden: int = 32, heads: int = 4, intermediate: int = 48,
              vocab_size: int, seed: int = 0, masked_lm: bool = False, dropout: float = 0.0) -> Path:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=128, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    model = (BertForMaskedLM if masked_lm else BertModel)(config)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """A 4-layer, hidden-32 random BERT with a character vocabulary and its tokenizer."""
    directory = tmp_path_factory.mktemp("teacher")
    tokenizer = save_tokenizer(directory, CHINESE_SENTENCES)
    return make_bert(directory, vocab_size=len(tokenizer), layers=4, hidden=32, heads=4)


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    """Plain text: documents of sentences, blank lines between documents."""
    lines = []
    for repeat in range(6):
        for i, sentence in enumerate(CHINESE_SENTENCES):
            lines.append(sentence)
            if i % 3 == 2:
                lines.append("")
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def interrupt_after(step: int, monkeypatch, output_dir_name: str | None = None) -> None:
    """Simulate a kill (KeyboardInterrupt) right after training step `step` is logged, optionally only in
    the run whose output directory is called `output_dir_name` (e.g. task distillation's "prediction")."""
    import pipeline.training.runtime

    real_step = pipeline.training.runtime.RunLog.step

    def step_then_crash(self, state, *args):
        real_step(self, state, *args)
        if state.step == step and output_dir_name in (None, self.path.parent.name):
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(pipeline.training.runtime.RunLog, "step", step_then_crash)
