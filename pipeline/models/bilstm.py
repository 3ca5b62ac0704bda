"""A BiLSTM student for classification (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks"): its vocabulary, the model, and its save format.

    embedding -> dropout -> one-layer BiLSTM -> masked max-pool over time -> h      (per sentence)
    single sentence:  MLP(h)                          -> logits
    sentence pair:    MLP([h1, h2, h1 * h2, |h1 - h2|]) -> logits   (one BiLSTM shared by both sentences)
    MLP = Linear -> ReLU -> dropout -> Linear

Tang et al. classify single sentences from the final forward/backward states; max-pooling is used here for
both cases (one code path, and it does not depend on where a long review was truncated).

`BiLSTMVocab` maps text to ids, characters or jieba words (`[PAD]` = 0, `[UNK]` = 1). It is called like a
Hugging Face tokenizer for the subset `tokenize_task` and `report.latency_batches` use, so the shared task
code (tokenisation, `collate`, `predict_logits`, the training loop) handles BiLSTM rows unchanged. A pair is
one row: the first sentence's ids with `token_type_ids` 0, then the second's with 1; the model splits them.

Save format (one directory):
    bilstm_config.json   `BiLSTMModelConfig`: sizes, unit, pair, task type, max_len, id2label/label2id
    model.safetensors    the state dict
    vocab.txt            one token per line, the line number is its id
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pipeline.config import atomic_write_text
from pipeline.errors import ModelError

BILSTM_CONFIG, BILSTM_WEIGHTS, BILSTM_VOCAB = "bilstm_config.json", "model.safetensors", "vocab.txt"
PAD, UNK = "[PAD]", "[UNK]"


def split_units(text: str, unit: str) -> list[str]:
    """Characters (whitespace dropped) or jieba words (whitespace-only words dropped)."""
    if unit == "char":
        return [ch for ch in str(text) if not ch.isspace()]
    import jieba

    return [word for word in jieba.lcut(str(text)) if word.strip()]


class BiLSTMVocab:
    """token <-> id for the BiLSTM; `[PAD]` = 0, `[UNK]` = 1, then tokens by descending count."""

    pad_token_id = 0
    unk_token_id = 1

    def __init__(self, tokens: Sequence[str], unit: Literal["char", "word"]):
        if list(tokens[:2]) != [PAD, UNK]:
            raise ModelError(f"a BiLSTM vocabulary must start with {PAD}, {UNK}; got {list(tokens[:2])}")
        self.tokens = list(tokens)
        self.unit = unit
        self.ids = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts: Iterable[str], unit: Literal["char", "word"], min_count: int = 1,
              max_size: int | None = None) -> BiLSTMVocab:
        """From the texts a student will see: tokens seen `min_count`+ times, the `max_size` most frequent."""
        counts = Counter(token for text in texts for token in split_units(text, unit))
        ranked = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        return cls([PAD, UNK, *ranked[:max_size]], unit)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """The ids of one text; an empty text is one `[UNK]`, so every sentence has a length >= 1."""
        return [self.ids.get(token, self.unk_token_id) for token in split_units(text, self.unit)] or [
            self.unk_token_id]

    def __call__(self, text: Sequence[str], text_pair: Sequence[str] | None = None, *, truncation: bool = False,
                 max_length: int | None = None, padding: bool | str = False, return_tensors: str | None = None):
        """Batched encoding in a tokenizer's shape: {"input_ids", "token_type_ids", "attention_mask"}.

        Truncation cuts the longer sentence of a pair first (keeping >= 1 id each), as `longest_first`
        does; `padding` (any true value) pads to the longest row; `return_tensors="pt"` gives tensors.
        """
        pairs = text_pair if text_pair is not None else [None] * len(text)
        input_ids, token_type_ids = [], []
        for first, second in zip(text, pairs, strict=True):
            a = self.encode(first)
            b = self.encode(second) if second is not None else []
            if truncation and max_length is not None:
                while len(a) + len(b) > max_length and max(len(a), len(b)) > 1:
                    (a if len(a) >= len(b) else b).pop()
            input_ids.append(a + b)
            token_type_ids.append([0] * len(a) + [1] * len(b))
        attention_mask = [[1] * len(ids) for ids in input_ids]
        encoded = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
        if padding:
            width = max(len(ids) for ids in input_ids)
            encoded = {key: [row + [0] * (width - len(row)) for row in rows] for key, rows in encoded.items()}
        if return_tensors == "pt":
            encoded = {key: torch.tensor(rows, dtype=torch.long) for key, rows in encoded.items()}
        return encoded

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / BILSTM_VOCAB
        atomic_write_text(path, "\n".join(self.tokens) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path, unit: Literal["char", "word"]) -> BiLSTMVocab:
        path = Path(directory) / BILSTM_VOCAB
        if not path.is_file():
            raise ModelError(f"BiLSTM vocabulary not found: {path}")
        return cls(path.read_text(encoding="utf-8").split("\n")[:-1], unit)


@dataclass(frozen=True)
class BiLSTMModelConfig:
    """What `bilstm_config.json` holds: enough to rebuild the model and check its label map."""

    vocab_size: int
    num_labels: int
    id2label: dict[int, str]
    label2id: dict[str, int]
    unit: Literal["char", "word"] = "char"
    pair: bool = False
    embedding_dim: int = 300
    hidden_size: int = 300
    mlp_hidden: int = 400
    dropout: float = 0.1
    max_len: int = 128
    task_type: str = "classification"
    model_type: str = field(default="bilstm", init=False)

    @property
    def feature_size(self) -> int:
        """The MLP's input: 2H per sentence (both directions), 4 x 2H for a pair."""
        return 2 * self.hidden_size * (4 if self.pair else 1)


@dataclass
class BiLSTMOutput:
    logits: torch.Tensor


class BiLSTMClassifier(nn.Module):
    """Takes the batch keys of a BERT classifier (`input_ids`, `attention_mask`, `token_type_ids`) and
    returns an object with `.logits` (B, num_labels), so the shared task code can run it."""

    def __init__(self, config: BiLSTMModelConfig, embeddings: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=0)
        if embeddings is not None:
            if tuple(embeddings.shape) != (config.vocab_size, config.embedding_dim):
                raise ModelError(f"embedding matrix {tuple(embeddings.shape)} does not fit vocabulary x dim "
                                 f"({config.vocab_size}, {config.embedding_dim})")
            with torch.no_grad():
                self.embedding.weight.copy_(embeddings)
                self.embedding.weight[0].zero_()
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.embedding_dim, config.hidden_size, batch_first=True, bidirectional=True)
        self.classifier = nn.Sequential(
            nn.Linear(config.feature_size, config.mlp_hidden), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.mlp_hidden, config.num_labels),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> BiLSTMOutput:
        mask = (input_ids != 0) if attention_mask is None else attention_mask.bool()
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        first = mask & (token_type_ids == 0)
        if not self.config.pair:
            return BiLSTMOutput(self.classifier(self.encode(input_ids, first.sum(dim=1))))
        h1 = self.encode(*_segment(input_ids, first))
        h2 = self.encode(*_segment(input_ids, mask & (token_type_ids == 1)))
        return BiLSTMOutput(self.classifier(torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1)))

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L) left-aligned ids and their lengths -> (B, 2H), max-pooled over the real positions."""
        lengths = lengths.clamp(min=1)
        width = int(lengths.max())
        ids = ids[:, :width]
        embedded = self.dropout(self.embedding(ids))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=width)
        real = torch.arange(width, device=ids.device)[None, :] < lengths[:, None]
        return states.masked_fill(~real[..., None], torch.finfo(states.dtype).min).amax(dim=1)


class BiLSTMGraph(nn.Module):
    """The classifier's function with shapes fixed by the input, for ONNX export: (input_ids, attention_mask,
    token_type_ids) -> logits, in eval mode.

    `BiLSTMClassifier.encode` packs each batch and reads its width from the data (`int(lengths.max())`); a
    traced graph would freeze both. Here both directions run over the whole padded width. The forward
    direction's states at real positions do not depend on the padding after them; the backward direction
    reads each row reversed within its length, so its states at real positions are those of the packed
    run, in reverse order, which max-pooling ignores.
    """

    def __init__(self, model: BiLSTMClassifier):
        super().__init__()
        self.model = model.eval()
        size = (model.config.embedding_dim, model.config.hidden_size)
        self.forward_lstm, self.backward_lstm = (nn.LSTM(*size, batch_first=True) for _ in range(2))
        for direction, suffix in ((self.forward_lstm, ""), (self.backward_lstm, "_reverse")):
            direction.load_state_dict({name: getattr(model.lstm, f"{name}{suffix}")
                                       for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")})
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        first = mask & (token_type_ids == 0)
        if not self.model.config.pair:
            return self.model.classifier(self.encode(input_ids, first.sum(dim=1)))
        # Both sentences in one LSTM call: the TorchScript exporter mis-shapes the weights of an LSTM used twice.
        width = input_ids.shape[1]
        (ids1, lengths1), (ids2, lengths2) = (_segment(input_ids, first, width),
                                              _segment(input_ids, mask & (token_type_ids == 1), width))
        h1, h2 = self.encode(torch.cat([ids1, ids2]), torch.cat([lengths1, lengths2])).chunk(2)
        return self.model.classifier(torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1))

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L) left-aligned ids and their lengths -> (B, 2H), as `BiLSTMClassifier.encode` computes it."""
        lengths = lengths.clamp(min=1)[:, None]
        steps = torch.arange(ids.shape[1], device=ids.device)[None, :]
        embedded = self.model.embedding(ids)
        reversed_order = (lengths - 1 - steps).clamp(min=0)  # past the length: any position, masked below
        backward_input = embedded.gather(1, reversed_order[..., None].expand_as(embedded))
        states = torch.cat([self.forward_lstm(embedded)[0], self.backward_lstm(backward_input)[0]], dim=-1)
        real = steps < lengths
        return states.masked_fill(~real[..., None], torch.finfo(states.dtype).min).amax(dim=1)


def _segment(input_ids: torch.Tensor, member: torch.Tensor,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids where `member` is true, moved to the left of each row (a contiguous span), and its lengths.
    `width` columns are kept (default: the longest span's)."""
    lengths = member.sum(dim=1)
    start = member.int().argmax(dim=1)  # the first member position (0 when the row has none)
    width = max(int(lengths.max()), 1) if width is None else width
    offsets = torch.arange(width, device=input_ids.device)[None, :]
    positions = (start[:, None] + offsets).clamp(max=input_ids.shape[1] - 1)
    ids = input_ids.gather(1, positions).masked_fill(offsets >= lengths[:, None], 0)
    return ids, lengths


def pretrained_embeddings(vocab: BiLSTMVocab, vectors, dim: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """A (len(vocab), dim) matrix from gensim-style `vectors` (`key in vectors`, `vectors[key]`) and the share
    of the vocabulary they cover; tokens without a vector get N(0, 0.1^2), `[PAD]` gets zeros."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(vocab), dim, generator=generator) * 0.1
    matrix[0] = 0.0
    found = 0
    for i, token in enumerate(vocab.tokens[2:], start=2):
        if token in vectors:
            matrix[i] = torch.from_numpy(np.asarray(vectors[token], dtype=np.float32))
            found += 1
    return matrix, found / max(1, len(vocab) - 2)


def save_bilstm(model: BiLSTMClassifier, vocab: BiLSTMVocab, directory: str | Path) -> Path:
    """Write the three files of the save format; the weights last."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / BILSTM_CONFIG, json.dumps(asdict(model.config), indent=2, ensure_ascii=False))
    vocab.save(directory)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    temp = directory / f".{BILSTM_WEIGHTS}.tmp"
    save_file(state, str(temp))
    temp.replace(directory / BILSTM_WEIGHTS)
    return directory


def is_bilstm_dir(path: str | Path) -> bool:
    return (Path(path) / BILSTM_CONFIG).is_file()


def load_bilstm_config(directory: str | Path) -> tuple[BiLSTMModelConfig, BiLSTMVocab]:
    """The config and vocabulary of a saved BiLSTM (no weights: an ONNX export folder holds these two too)."""
    directory = Path(directory)
    for name in (BILSTM_CONFIG, BILSTM_VOCAB):
        if not (directory / name).is_file():
            raise ModelError(f"BiLSTM directory {directory} has no {name}")
    data = json.loads((directory / BILSTM_CONFIG).read_text(encoding="utf-8"))
    data.pop("model_type", None)
    data["id2label"] = {int(k): v for k, v in data["id2label"].items()}
    try:
        config = BiLSTMModelConfig(**data)
    except TypeError as err:
        raise ModelError(f"{directory / BILSTM_CONFIG}: {err}") from None
    vocab = BiLSTMVocab.load(directory, config.unit)
    if len(vocab) != config.vocab_size:
        raise ModelError(f"{directory}: vocab.txt has {len(vocab)} tokens, bilstm_config.json says "
                         f"{config.vocab_size}")
    return config, vocab


def load_bilstm(directory: str | Path) -> tuple[BiLSTMClassifier, BiLSTMVocab]:
    """The model (eval mode, float32) and its vocabulary from a directory written by `save_bilstm`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / BILSTM_WEIGHTS).is_file():
        raise ModelError(f"BiLSTM directory {directory} has no {BILSTM_WEIGHTS}")
    config, vocab = load_bilstm_config(directory)
    model = BiLSTMClassifier(config)
    model.load_state_dict(load_file(str(directory / BILSTM_WEIGHTS)))
    return model.eval(), vocab
