"""Stage two on tiny random models: fine-tuning, both distillation steps, the logits cache, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CHINESE_SENTENCES, interrupt_after, make_bert, save_tokenizer
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, BertConfig

import stages.task
from pipeline.cli import main as cli_main
from pipeline.config import from_dict
from pipeline.errors import ConfigError, DataError, ModelError
from stages.finetune import FinetuneConfig, run_finetune
from stages.task import TaskDistillConfig, run_task

SENTIMENT = ["pos", "neg", "pos", "neg", "neg", "pos", "pos", "pos"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sentiment")
    rows = [{"text": s, "label": label} for s, label in zip(CHINESE_SENTENCES, SENTIMENT)]
    return {"train": write_jsonl(root / "train.jsonl", rows * 4), "dev": write_jsonl(root / "dev.jsonl", rows)}


def task_section(files: dict, **extra) -> dict:
    return {"type": "classification", "train": str(files["train"]), "dev": str(files["dev"]), "max_seq_len": 32,
            **extra}


def quiet_train(**extra) -> dict:
    return {"batch_size": 8, "lr": 1e-3, "progress_bar": False, "log_every": 1, "save_every": 100, **extra}


@pytest.fixture(scope="module")
def fine_tuned_teacher(tmp_path_factory, sentiment_files) -> Path:
    """The conftest-style 4-layer random BERT, fine-tuned on the sentiment rows through run_finetune."""
    base = tmp_path_factory.mktemp("pretrained")
    tokenizer = save_tokenizer(base, CHINESE_SENTENCES)
    make_bert(base, vocab_size=len(tokenizer), layers=4, hidden=32, heads=4)
    out = tmp_path_factory.mktemp("teacher") / "ft"
    run_finetune(from_dict(FinetuneConfig, {
        "model": str(base), "task": task_section(sentiment_files), "output_dir": str(out),
        "train": quiet_train(epochs=10, lr=3e-3, warmup_ratio=0.0), "eval_every": 4,
    }))
    return out


def task_config(teacher: Path, files: dict, out: Path, **overrides) -> dict:
    config = {
        "teacher": str(teacher), "task": task_section(files), "output_dir": str(out),
        "student": {"preset": None, "num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 24,
                    "num_attention_heads": 4},
        "intermediate": {"train": quiet_train(max_steps=4, schedule="constant", warmup_ratio=0.0)},
        "prediction": {"train": quiet_train(max_steps=6), "eval_every": 2},
        "cache_dir": str(out.parent / "logits_cache"),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def _start_event(directory: Path) -> dict:
    events = [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]
    return next(e for e in events if e.get("event") == "start")


def test_finetune_stores_the_label_map_and_dev_metrics(fine_tuned_teacher):
    model = AutoModelForSequenceClassification.from_pretrained(fine_tuned_teacher)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    metrics = json.loads((fine_tuned_teacher / "metrics.json").read_text())
    assert set(metrics["dev"]) >= {"accuracy", "macro_f1", "mcc"}
    assert metrics["dev"]["accuracy"] == 1.0  # 8 dev rows, all seen in training: a working loop fits them


def test_best_checkpoint_is_the_best_dev_score(fine_tuned_teacher):
    events = [json.loads(line) for line in (fine_tuned_teacher / "train_log.jsonl").read_text().splitlines()]
    dev = [e for e in events if e.get("event") == "dev"]
    assert len(dev) == 10  # 40 steps, every 4
    best = max(dev, key=lambda e: e["dev_accuracy"])  # max keeps the first of equal scores, as training does
    assert json.loads((fine_tuned_teacher / "metrics.json").read_text())["best_step"] == best["step"]
    saved = load_file(fine_tuned_teacher / "model.safetensors")
    best_dir = load_file(fine_tuned_teacher / "best" / "model.safetensors")
    for name in saved:
        torch.testing.assert_close(saved[name], best_dir[name], rtol=0, atol=0)


def _count_teacher_forwards(monkeypatch) -> list[int]:
    calls = [0]
    real_load = stages.task.load_teacher

    def counting_load(*args, **kwargs):
        teacher = real_load(*args, **kwargs)
        teacher.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        return teacher

    monkeypatch.setattr(stages.task, "load_teacher", counting_load)
    return calls


def test_two_step_distillation_saves_a_loadable_student_with_the_label_map(fine_tuned_teacher, sentiment_files,
                                                                          tmp_path, monkeypatch):
    calls = _count_teacher_forwards(monkeypatch)
    out = tmp_path / "student"
    run_task(from_dict(TaskDistillConfig, task_config(fine_tuned_teacher, sentiment_files, out)))
    # Step 1 runs the teacher once on a probe batch (to find what no loss term reaches) and on each of
    # its 4 batches; step 2 computes the cache in one batch of 64 (32 rows), then trains without the teacher.
    assert calls[0] == 1 + 4 + 1
    student = AutoModelForSequenceClassification.from_pretrained(out)
    assert student.config.id2label == {0: "neg", 1: "pos"} and student.config.num_hidden_layers == 2
    assert (out / "tinydistill_run.json").is_file() and (out / "intermediate" / "projections.safetensors").is_file()
    log = [json.loads(line) for line in (out / "prediction" / "train_log.jsonl").read_text().splitlines()]
    assert sum(1 for e in log if e.get("event") == "dev") == 3
    assert all("soft_ce" in e for e in log if "step" in e and "event" not in e)
    step1 = [json.loads(line) for line in (out / "intermediate" / "train_log.jsonl").read_text().splitlines()]
    assert {"hidden", "attention", "embedding"} <= set(step1[-1])
    assert set(json.loads((out / "metrics.json").read_text())["dev"]) >= {"accuracy"}

    # A second run over the same transfer set and teacher reuses the cached logits: no teacher forward.
    calls[0] = 0
    again = tmp_path / "again"
    run_task(from_dict(TaskDistillConfig, task_config(fine_tuned_teacher, sentiment_files, again,
                                                      intermediate={"enabled": False})))
    assert calls[0] == 0


def test_each_task_step_runs_under_its_own_train_settings(fine_tuned_teacher, sentiment_files, tmp_path):
    out = tmp_path / "student"
    step1 = quiet_train(max_steps=2, grad_accum=2, batch_size=4, mixed_precision="bf16", teacher_dtype="bfloat16",
                        seed=7)
    step2 = quiet_train(max_steps=2, grad_accum=1, mixed_precision="no", teacher_dtype="float32", seed=11)
    run_task(from_dict(TaskDistillConfig, task_config(fine_tuned_teacher, sentiment_files, out,
                                                      intermediate={"train": step1},
                                                      prediction={"train": step2, "eval_every": 2})))
    first, second = _start_event(out / "intermediate"), _start_event(out / "prediction")
    assert (first["mixed_precision"], first["grad_accum"], first["seed"], first["teacher_dtype"]) == \
        ("bf16", 2, 7, "bfloat16")
    assert first["effective_batch"] == 8
    assert (second["mixed_precision"], second["grad_accum"], second["seed"], second["teacher_dtype"]) == \
        ("no", 1, 11, "float32")


def test_cached_and_live_teacher_logits_train_the_same_student(fine_tuned_teacher, sentiment_files, tmp_path):
    def run(name, cache):
        out = tmp_path / name
        run_task(from_dict(TaskDistillConfig, task_config(
            fine_tuned_teacher, sentiment_files, out, intermediate={"enabled": False},
            prediction={"train": quiet_train(max_steps=4), "cache_teacher_logits": cache, "eval_every": None})))
        return load_file(out / "model.safetensors")

    live, cached = run("live", False), run("cached", True)
    for name in live:
        torch.testing.assert_close(cached[name], live[name], rtol=0, atol=1e-6, msg=name)


def test_a_changed_teacher_misses_the_cache(fine_tuned_teacher, sentiment_files, tmp_path, monkeypatch):
    cfg = task_config(fine_tuned_teacher, sentiment_files, tmp_path / "a", intermediate={"enabled": False})
    run_task(from_dict(TaskDistillConfig, cfg))
    changed = tmp_path / "changed_teacher"
    model = AutoModelForSequenceClassification.from_pretrained(fine_tuned_teacher)
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    model.save_pretrained(changed)
    save_tokenizer(changed, CHINESE_SENTENCES)
    calls = _count_teacher_forwards(monkeypatch)
    run_task(from_dict(TaskDistillConfig, {**cfg, "teacher": str(changed), "output_dir": str(tmp_path / "b")}))
    assert calls[0] == 1
    assert len([p for p in Path(cfg["cache_dir"]).iterdir() if not p.name.startswith(".")]) == 2


@pytest.mark.parametrize("group_by_length", [False, True])
def test_killed_and_resumed_task_distillation_equals_an_uninterrupted_run(fine_tuned_teacher, sentiment_files,
                                                                         tmp_path, monkeypatch, group_by_length):
    overrides = {"student": {"preset": None, "num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 24,
                             "num_attention_heads": 4, "dropout": 0.1},
                 "prediction": {"train": quiet_train(max_steps=6, save_every=2, group_by_length=group_by_length),
                                "eval_every": 2}}
    straight = tmp_path / "straight"
    run_task(from_dict(TaskDistillConfig, task_config(fine_tuned_teacher, sentiment_files, straight, **overrides)))

    resumed = tmp_path / "resumed"
    cfg = task_config(fine_tuned_teacher, sentiment_files, resumed, **overrides)
    interrupt_after(3, monkeypatch, "prediction")  # step 2 checkpointed at its step 2, killed after 3
    with pytest.raises(KeyboardInterrupt):
        run_task(from_dict(TaskDistillConfig, cfg))
    monkeypatch.undo()
    assert (resumed / "intermediate" / "tinydistill_run.json").is_file()
    assert (resumed / "prediction" / "checkpoints" / "step_000002").is_dir()
    with pytest.raises(ConfigError, match="unfinished task distillation; pass --resume"):
        run_task(from_dict(TaskDistillConfig, cfg))
    run_task(from_dict(TaskDistillConfig, {**cfg, "resume_from": "auto"}))
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_teacher_with_another_label_map_is_refused(fine_tuned_teacher, sentiment_files, tmp_path):
    wrong = tmp_path / "wrong"
    model = AutoModelForSequenceClassification.from_pretrained(fine_tuned_teacher)
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    model.save_pretrained(wrong)
    save_tokenizer(wrong, CHINESE_SENTENCES)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=r"teacher's label map \{0: 'negative', 1: 'positive'\} disagrees with "
                                         r"the data's labels \['neg', 'pos'\]"):
        run_task(from_dict(TaskDistillConfig, task_config(wrong, sentiment_files, out)))
    assert not out.exists()  # refused before anything was written


def test_teacher_without_a_task_head_is_refused(teacher_dir, sentiment_files, tmp_path):
    with pytest.raises(ModelError, match="teacher has 2 labels but|no label names"):
        run_task(from_dict(TaskDistillConfig, task_config(teacher_dir, sentiment_files, tmp_path / "o")))


@pytest.mark.parametrize("change, error, message", [
    ({"task": {"text": "sentence"}}, DataError, r"task\.text: column 'sentence' is not in the train split"),
    ({"task": {"train": "/no/such/train.jsonl"}}, DataError, "not found: /no/such/train.jsonl"),
    ({"transfer": "/no/such/augmented"}, DataError, "transfer: not found"),
    ({"task": {"max_seq_len": 4096}}, ModelError, "exceeds max_position_embeddings"),
    ({"mapping": {"teacher_layers": [1, 2, 9]}}, ConfigError, "has 3 entries but the student has 2 layers"),
    ({"mapping": {"teacher_layers": [2, 9]}}, ConfigError, "teacher layer 9|out of range|only 4"),
    ({"intermediate": {"enabled": False}, "prediction": {"enabled": False}}, ConfigError, "nothing to do"),
    ({"prediction": {"loss": {"temperature": 0}}}, ConfigError, r"prediction\.loss\.temperature: must be > 0"),
])
def test_bad_task_inputs_fail_with_a_clear_message(fine_tuned_teacher, sentiment_files, tmp_path, change, error,
                                                   message):
    base = task_config(fine_tuned_teacher, sentiment_files, tmp_path / "out")
    for key, value in change.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(error, match=message):
        run_task(from_dict(TaskDistillConfig, base))
    assert not (tmp_path / "out").exists()


def test_unknown_label_in_dev_is_reported_with_its_row(fine_tuned_teacher, sentiment_files, tmp_path):
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "好", "label": "pos"}, {"text": "坏", "label": "meh"}])
    cfg = task_config(fine_tuned_teacher, {**sentiment_files, "dev": dev}, tmp_path / "out")
    with pytest.raises(DataError, match=r"task\.dev: row 1 has label 'meh', which is not one of \['neg', 'pos'\]"):
        run_task(from_dict(TaskDistillConfig, cfg))


def test_cli_runs_task_distillation_from_yaml(fine_tuned_teacher, sentiment_files, tmp_path, capsys):
    import yaml

    config = tmp_path / "task.yaml"
    config.write_text(yaml.safe_dump(task_config(fine_tuned_teacher, sentiment_files, tmp_path / "out")))
    assert cli_main(["task", str(config)]) == 0
    assert cli_main(["task", str(config)]) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert cli_main(["task", str(config), "prediction.loss.hard_weight=0.5", "--overwrite"]) == 0
    log = (tmp_path / "out" / "prediction" / "train_log.jsonl").read_text()
    assert '"hard_ce"' in log


def test_token_classification_end_to_end(tmp_path):
    sentences = [list(s[:12]) for s in CHINESE_SENTENCES]
    rows = [{"tokens": chars, "tags": ["B-LOC" if i == 0 else "I-LOC" if i == 1 else "O" for i in range(len(chars))]}
            for chars in sentences]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows * 4), "dev": write_jsonl(tmp_path / "dev.jsonl", rows)}
    base = tmp_path / "base"
    tokenizer = save_tokenizer(base, CHINESE_SENTENCES)
    make_bert(base, vocab_size=len(tokenizer), layers=2, hidden=32, heads=4)
    teacher = tmp_path / "teacher"
    task = {"type": "token", "train": str(files["train"]), "dev": str(files["dev"]), "max_seq_len": 32}
    run_finetune(from_dict(FinetuneConfig, {"model": str(base), "task": task, "output_dir": str(teacher),
                                            "train": quiet_train(epochs=3)}))
    assert AutoModelForTokenClassification.from_pretrained(teacher).config.id2label == {0: "O", 1: "B-LOC", 2: "I-LOC"}
    out = tmp_path / "student"
    cfg = task_config(teacher, files, out, task=task)
    cfg["mapping"] = {"teacher_layers": [1, 2]}
    run_task(from_dict(TaskDistillConfig, cfg))
    metrics = json.loads((out / "metrics.json").read_text())["dev"]
    assert set(metrics) >= {"entity_f1", "token_accuracy"}
    assert AutoModelForTokenClassification.from_pretrained(out).config.num_labels == 3


def test_regression_task_distils_to_the_teachers_scores(tmp_path):
    rows = [{"text": s, "score": float(i % 5)} for i, s in enumerate(CHINESE_SENTENCES)]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows * 4), "dev": write_jsonl(tmp_path / "dev.jsonl", rows)}
    base = tmp_path / "base"
    tokenizer = save_tokenizer(base, CHINESE_SENTENCES)
    make_bert(base, vocab_size=len(tokenizer), layers=2, hidden=32, heads=4)
    task = {"type": "regression", "train": str(files["train"]), "dev": str(files["dev"]), "label": "score",
            "max_seq_len": 32}
    teacher = tmp_path / "teacher"
    run_finetune(from_dict(FinetuneConfig, {"model": str(base), "task": task, "output_dir": str(teacher),
                                            "train": quiet_train(epochs=2)}))
    assert BertConfig.from_pretrained(teacher).num_labels == 1
    out = tmp_path / "student"
    cfg = task_config(teacher, files, out, task=task)
    cfg["mapping"] = {"teacher_layers": [1, 2]}
    run_task(from_dict(TaskDistillConfig, cfg))
    assert set(json.loads((out / "metrics.json").read_text())["dev"]) >= {"pearson", "spearman", "corr"}


def test_evaluate_reports_scores_retention_size_latency_and_curves(fine_tuned_teacher, sentiment_files, tmp_path,
                                                                   capsys):
    import yaml

    student = tmp_path / "student"
    run_task(from_dict(TaskDistillConfig, task_config(fine_tuned_teacher, sentiment_files, student)))
    config = tmp_path / "evaluate.yaml"
    config.write_text(yaml.safe_dump({
        "teacher": str(fine_tuned_teacher), "student": str(student), "task": task_section(sentiment_files),
        "output_dir": str(tmp_path / "report"), "name": "reviews",
        "latency": {"batch_sizes": [1, 4], "min_seconds": 0.05},
    }))
    assert cli_main(["evaluate", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "| teacher |" in printed and "| student |" in printed and "report.md" in printed
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    teacher, distilled = report["models"]["teacher"], report["models"]["student"]
    assert report["task"]["split"] == "dev" and report["main_metric"] == "accuracy"
    assert report["retention_percent"] == pytest.approx(
        100 * distilled["metrics"]["accuracy"] / teacher["metrics"]["accuracy"])
    assert report["parameter_ratio"] == pytest.approx(teacher["parameters"] / distilled["parameters"])
    assert teacher["parameters"] > distilled["parameters"]
    assert set(teacher["latency"]) == {"1", "4"} and teacher["latency"]["4"]["ms_per_example"] > 0
    assert set(report["speedup"]) == {"1", "4"}
    assert (tmp_path / "report" / "training_curves.png").stat().st_size > 1000


def test_evaluate_refuses_a_student_with_another_label_map(fine_tuned_teacher, sentiment_files, tmp_path):
    from stages.evaluate import EvaluateConfig, run_evaluate

    wrong = tmp_path / "wrong"
    model = AutoModelForSequenceClassification.from_pretrained(fine_tuned_teacher)
    model.config.id2label, model.config.label2id = {0: "pos", 1: "neg"}, {"pos": 0, "neg": 1}
    model.save_pretrained(wrong)
    save_tokenizer(wrong, CHINESE_SENTENCES)
    with pytest.raises(ModelError, match="order their labels differently"):
        run_evaluate(from_dict(EvaluateConfig, {"teacher": str(fine_tuned_teacher), "student": str(wrong),
                                                "task": task_section(sentiment_files),
                                                "output_dir": str(tmp_path / "r")}))


def test_classlabel_columns_use_their_names(tmp_path):
    import datasets

    from pipeline.tasks.data import TaskConfig, label_names_from, tokenize_task

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    data = datasets.Dataset.from_dict({"tokens": [["王", "小", "明", "来", "了"]], "ner_tags": [[1, 2, 2, 0, 0]]},
                                      features=features)
    cfg = TaskConfig(type="token", train="x", tags="ner_tags")
    assert label_names_from(cfg, data) == ["O", "B-PER", "I-PER"]
    tokenizer = save_tokenizer(tmp_path / "tok", CHINESE_SENTENCES + ["王小明来了"])
    # A teacher that orders the same names differently: ids follow the teacher, not the column.
    row = tokenize_task(data, tokenizer, cfg, ["I-PER", "O", "B-PER"], "train")[0]
    assert row["word_labels"] == [2, 0, 0, 1, 1]
    assert row["labels"] == [-100, 2, 0, 0, 1, 1, -100]


def test_reading_a_saved_transfer_set_leaves_its_folder_as_written(tmp_path):
    """Tokenizing never writes `datasets` cache files into the folder it read: that folder is another stage's
    output, and a new file in it changes that stage's stamp, so the next run re-ran a finished stage."""
    import datasets

    from pipeline.run import _file_stamp
    from pipeline.tasks.data import TaskConfig, load_transfer, tokenize_task

    transfer = tmp_path / "augment"
    datasets.Dataset.from_dict({"text": CHINESE_SENTENCES, "label": SENTIMENT}).save_to_disk(str(transfer / "dataset"))
    before = sorted(p.name for p in (transfer / "dataset").iterdir()), _file_stamp(transfer)
    cfg = TaskConfig(type="classification", train="x", max_seq_len=32)
    tokenizer = save_tokenizer(tmp_path / "tok", CHINESE_SENTENCES)
    rows = tokenize_task(load_transfer(cfg, str(transfer), need_labels=True), tokenizer, cfg, ["neg", "pos"],
                         "transfer")
    assert len(rows) == len(CHINESE_SENTENCES) and rows[0]["labels"] == 1  # "pos" of ["neg", "pos"]
    assert (sorted(p.name for p in (transfer / "dataset").iterdir()), _file_stamp(transfer)) == before


def test_token_labels_go_on_the_first_sub_token_only(tmp_path):
    import datasets
    from transformers import BertTokenizer

    from pipeline.tasks.data import TaskConfig, tokenize_task

    vocab = tmp_path / "vocab.txt"
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play", "##ing", "the", "game", "new", "##s"]
    vocab.write_text("".join(f"{piece}\n" for piece in pieces))
    tokenizer = BertTokenizer(vocab=str(vocab))
    data = datasets.Dataset.from_dict({"tokens": [["playing", "the", "news", "game"]],
                                       "tags": [["B-X", "O", "B-Y", "I-Y"]]})
    row = tokenize_task(data, tokenizer, TaskConfig(type="token", train="x"), ["O", "B-X", "B-Y", "I-Y"], "t")[0]
    assert tokenizer.convert_ids_to_tokens(row["input_ids"]) == ["[CLS]", "play", "##ing", "the", "new", "##s",
                                                                 "game", "[SEP]"]
    assert row["labels"] == [-100, 1, -100, 0, 2, -100, 3, -100]
    assert row["word_positions"] == [1, 3, 4, 6]
    # Truncation drops the last words: their positions are -1 and they are scored as "O".
    longer = datasets.Dataset.from_dict({"tokens": [["playing", "the", "news", "game", "the", "game"]],
                                         "tags": [["B-X", "O", "B-Y", "I-Y", "O", "O"]]})
    cut = tokenize_task(longer, tokenizer, TaskConfig(type="token", train="x", max_seq_len=8),
                        ["O", "B-X", "B-Y", "I-Y"], "t")[0]
    assert cut["word_positions"] == [1, 3, 4, 6, -1, -1]


@pytest.fixture(scope="module")
def second_teacher(tmp_path_factory, sentiment_files, fine_tuned_teacher) -> Path:
    """Another fine-tuned teacher from the same pretrained model, with another seed (head init, order)."""
    base = tmp_path_factory.mktemp("pretrained2")
    tokenizer = save_tokenizer(base, CHINESE_SENTENCES)
    make_bert(base, vocab_size=len(tokenizer), layers=2, hidden=32, heads=4, seed=1)
    out = tmp_path_factory.mktemp("teacher2") / "ft"
    run_finetune(from_dict(FinetuneConfig, {
        "model": str(base), "task": task_section(sentiment_files), "output_dir": str(out),
        "train": quiet_train(epochs=4, lr=3e-3, warmup_ratio=0.0, seed=7),
    }))
    return out


def test_two_teacher_ensemble_caches_each_teacher_and_reruns_without_teacher_forwards(
        fine_tuned_teacher, second_teacher, sentiment_files, tmp_path, monkeypatch):
    calls = _count_teacher_forwards(monkeypatch)
    cfg = task_config(fine_tuned_teacher, sentiment_files, tmp_path / "first", intermediate={"enabled": False},
                      ensemble_teachers=[str(second_teacher)])
    run_task(from_dict(TaskDistillConfig, cfg))
    assert calls[0] == 2  # each teacher scores the 32 transfer rows once, in one batch of 64
    log = [json.loads(line) for line in (tmp_path / "first" / "prediction" / "train_log.jsonl").read_text()
           .splitlines()]
    header = next(e for e in log if e.get("event") == "start")
    assert header["teachers"] == 2 and header["ensemble"] == "probabilities"
    assert all("soft_ce" in e for e in log if "step" in e and "event" not in e)
    assert len([p for p in Path(cfg["cache_dir"]).iterdir() if not p.name.startswith(".")]) == 2

    calls[0] = 0
    run_task(from_dict(TaskDistillConfig, {**cfg, "output_dir": str(tmp_path / "again")}))
    assert calls[0] == 0


def _relabelled_copy(teacher: Path, target: Path, id2label: dict[int, str], permutation: list[int]) -> Path:
    """The teacher with its classifier rows permuted and its label map renamed or reordered."""
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[permutation])
        model.classifier.bias.copy_(model.classifier.bias[permutation])
    model.config.id2label, model.config.label2id = id2label, {name: i for i, name in id2label.items()}
    model.save_pretrained(target)
    save_tokenizer(target, CHINESE_SENTENCES)
    return target


def test_ensemble_teacher_with_another_label_order_is_put_in_the_first_teachers_order(
        fine_tuned_teacher, sentiment_files, tmp_path):
    # The same teacher with its labels swapped: once reordered, its probabilities equal the first
    # teacher's, so the ensemble's average is the single teacher's target. The ensemble run is live.
    swapped = _relabelled_copy(fine_tuned_teacher, tmp_path / "swapped", {0: "pos", 1: "neg"}, [1, 0])
    prediction = {"train": quiet_train(max_steps=4), "eval_every": None}
    single = task_config(fine_tuned_teacher, sentiment_files, tmp_path / "single", intermediate={"enabled": False},
                         prediction=prediction)
    run_task(from_dict(TaskDistillConfig, single))
    ensemble = task_config(fine_tuned_teacher, sentiment_files, tmp_path / "ensemble",
                           intermediate={"enabled": False}, ensemble_teachers=[str(swapped)],
                           prediction={**prediction, "cache_teacher_logits": False})
    run_task(from_dict(TaskDistillConfig, ensemble))
    expected = load_file(tmp_path / "single" / "model.safetensors")
    actual = load_file(tmp_path / "ensemble" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_ensemble_teacher_with_other_label_names_is_refused(fine_tuned_teacher, sentiment_files, tmp_path):
    renamed = _relabelled_copy(fine_tuned_teacher, tmp_path / "renamed", {0: "negative", 1: "positive"}, [0, 1])
    out = tmp_path / "out"
    cfg = task_config(fine_tuned_teacher, sentiment_files, out, ensemble_teachers=[str(renamed)])
    with pytest.raises(ModelError, match=r"^ensemble_teachers\[0\]'s label map \{0: 'negative', 1: 'positive'\} "
                                         r"disagrees with the first teacher's labels \['neg', 'pos'\]$"):
        run_task(from_dict(TaskDistillConfig, cfg))
    assert not out.exists()
