"""`tinydistill export` on tiny random models: every head exports, ONNX matches PyTorch on padded batches of
mixed lengths, int8 is smaller, bad inputs give one-line errors; evaluate's four rows; the run's export stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import CHINESE_SENTENCES, save_tokenizer
from test_task import SENTIMENT, task_section, write_jsonl
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GPT2Config,
    GPT2Model,
)

import stages.export
from pipeline.cli import main as cli_main
from pipeline.config import from_dict
from pipeline.errors import ConfigError, ModelError
from pipeline.models.bilstm import BiLSTMClassifier, BiLSTMModelConfig, BiLSTMVocab, save_bilstm
from pipeline.run import RunConfig, run_pipeline
from stages.evaluate import EvaluateConfig, run_evaluate
from stages.export import ExportConfig, run_export

LABELS = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
TAGS = {"id2label": {0: "B-LOC", 1: "I-LOC", 2: "O"}, "label2id": {"B-LOC": 0, "I-LOC": 1, "O": 2}}
MIXED = ["好", "房间太小了", CHINESE_SENTENCES[0], "价格便宜，性价比很高"]  # four lengths in one padded batch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def save_bert(directory: Path, model_class, seed: int = 0, layers: int = 2, **labels) -> Path:
    """A random BERT with the character tokenizer; weights drawn wide (std 0.2) so that logits spread over
    a few units and a wrong padding mask or a frozen shape would show as a large difference."""
    tokenizer = save_tokenizer(directory, CHINESE_SENTENCES)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, initializer_range=0.2, **labels)
    model_class(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sentiment")
    rows = [{"text": s, "label": label} for s, label in zip(CHINESE_SENTENCES, SENTIMENT)]
    return {"train": write_jsonl(root / "train.jsonl", rows * 2), "dev": write_jsonl(root / "dev.jsonl", rows)}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("classifier") / "student", BertForSequenceClassification, **LABELS)


@pytest.fixture(scope="module")
def classifier_export(classifier, sentiment, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "classifier"
    run_export(from_dict(ExportConfig, {"model": str(classifier), "output_dir": str(out), "int8": True,
                                        "task": task_section(sentiment)}))
    return out


def onnx_outputs(path: Path, batch: dict) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    return session.run(None, {name: batch[name].numpy() for name in names})[0]


def mixed_batch(tokenizer_dir: Path) -> dict:
    return dict(AutoTokenizer.from_pretrained(tokenizer_dir)(MIXED, padding=True, return_tensors="pt"))


def test_classifier_export_matches_pytorch_on_a_padded_batch_of_mixed_lengths(classifier, classifier_export):
    model = BertForSequenceClassification.from_pretrained(classifier).eval()
    batch = mixed_batch(classifier_export)
    assert batch["attention_mask"].sum(1).unique().numel() == len(MIXED)
    with torch.no_grad():
        expected = model(**batch).logits.numpy()
        alone = np.concatenate([model(**mixed_batch_row(classifier_export, text)).logits.numpy() for text in MIXED])
    got = onnx_outputs(classifier_export / "model.onnx", batch)
    assert np.abs(expected).max() > 0.5  # logits large enough for the comparison to mean something
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got, alone, atol=1e-4)  # padding changes nothing: the mask reaches the graph


def mixed_batch_row(tokenizer_dir: Path, text: str) -> dict:
    return dict(AutoTokenizer.from_pretrained(tokenizer_dir)([text], return_tensors="pt"))


def test_classifier_export_writes_int8_tokenizer_label_map_and_validation_figures(classifier_export):
    info = json.loads((classifier_export / "export.json").read_text())
    assert info["head"] == "sequence" and info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["labels"] == ["neg", "pos"]
    assert info["validation"]["inputs"].startswith("dev split") and "(8 rows)" in info["validation"]["inputs"]
    fp32, int8 = info["files"]["model.onnx"], info["files"]["model.int8.onnx"]
    assert fp32["max_abs_diff"] < 1e-4 and fp32["argmax_agreement"] == 1.0 and fp32["rows"] == 8
    assert set(int8["candidates"]) == {"per_tensor", "per_channel"} and int8["max_abs_diff"] > 0
    assert (classifier_export / "model.int8.onnx").stat().st_size < (classifier_export / "model.onnx").stat().st_size
    assert json.loads((classifier_export / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    assert AutoTokenizer.from_pretrained(classifier_export)("好")["input_ids"][1] != 1  # not [UNK]
    assert not [p for p in classifier_export.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_token_classifier_exports_per_token_logits_through_the_cli(tmp_path, capsys):
    model_dir = save_bert(tmp_path / "ner", BertForTokenClassification, **TAGS)
    out = tmp_path / "ner_onnx"
    assert cli_main(["export", str(model_dir), str(out), "--int8", "--fp16", "--opset", "18"]) == 0
    assert "model.int8.onnx" in capsys.readouterr().out
    batch = mixed_batch(out)
    with torch.no_grad():
        expected = BertForTokenClassification.from_pretrained(model_dir).eval()(**batch).logits.numpy()
    got = onnx_outputs(out / "model.onnx", batch)
    real = batch["attention_mask"].numpy().astype(bool)
    assert got.shape == expected.shape == (len(MIXED), batch["input_ids"].shape[1], 3)
    np.testing.assert_allclose(got[real], expected[real], atol=1e-4)
    info = json.loads((out / "export.json").read_text())
    assert info["head"] == "token" and info["opset"] == 18 and info["labels"] == ["B-LOC", "I-LOC", "O"] and info["validation"]["inputs"].startswith("generated")
    assert set(info["files"]) == {"model.onnx", "model.int8.onnx", "model.fp16.onnx"}


def test_question_answering_student_exports_start_and_end_logits_stacked(tmp_path, capsys):
    model_dir = save_bert(tmp_path / "qa", BertForQuestionAnswering)
    out = tmp_path / "qa_onnx"
    assert cli_main(["export", str(model_dir), str(out), "--int8"]) == 0
    batch = mixed_batch(out)
    with torch.no_grad():
        expected = BertForQuestionAnswering.from_pretrained(model_dir).eval()(**batch)
    expected = torch.stack([expected.start_logits, expected.end_logits], -1).numpy()
    got = onnx_outputs(out / "model.onnx", batch)
    real = batch["attention_mask"].numpy().astype(bool)
    assert got.shape == expected.shape == (len(MIXED), batch["input_ids"].shape[1], 2)
    np.testing.assert_allclose(got[real], expected[real], atol=1e-4)
    info = json.loads((out / "export.json").read_text())
    fp32 = info["files"]["model.onnx"]
    assert info["head"] == "qa" and fp32["argmax_agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-4


def test_general_student_exports_its_hidden_states_even_when_validated_on_one_row(teacher_dir, tmp_path):
    out = tmp_path / "encoder_onnx"
    run_export(from_dict(ExportConfig, {"model": str(teacher_dir), "output_dir": str(out), "validation_rows": 1}))
    batch = mixed_batch(out)
    with torch.no_grad():
        expected = BertModel.from_pretrained(teacher_dir).eval()(**batch).last_hidden_state.numpy()
    real = batch["attention_mask"].numpy().astype(bool)
    np.testing.assert_allclose(onnx_outputs(out / "model.onnx", batch)[real], expected[real], atol=1e-4)
    info = json.loads((out / "export.json").read_text())
    assert info["head"] == "encoder" and info["output"] == "last_hidden_state"
    assert info["files"]["model.onnx"]["argmax_agreement"] is None


@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
def test_bilstm_student_exports_and_matches_its_packed_forward(tmp_path, pair):
    vocab = BiLSTMVocab.build(CHINESE_SENTENCES, "char")
    torch.manual_seed(0)
    model = BiLSTMClassifier(BiLSTMModelConfig(vocab_size=len(vocab), num_labels=2, pair=pair, embedding_dim=64,
                                               hidden_size=64, mlp_hidden=64, **LABELS)).eval()
    save_bilstm(model, vocab, tmp_path / "bilstm")
    out = tmp_path / "bilstm_onnx"
    run_export(from_dict(ExportConfig, {"model": str(tmp_path / "bilstm"), "output_dir": str(out), "int8": True}))
    batch = vocab(MIXED, MIXED[::-1] if pair else None, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits.numpy()
    np.testing.assert_allclose(onnx_outputs(out / "model.onnx", batch), expected, atol=1e-5)
    assert (out / "vocab.txt").is_file() and (out / "bilstm_config.json").is_file()
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size


def test_cli_task_config_validates_on_the_tasks_dev_split(classifier, sentiment, tmp_path, capsys):
    import yaml

    config = tmp_path / "task.yaml"
    config.write_text(yaml.safe_dump({"task": task_section(sentiment), "output_dir": "ignored"}))
    assert cli_main(["export", str(classifier), str(tmp_path / "out"), "--task-config", str(config)]) == 0
    assert f"checked on dev split {sentiment['dev']} (8 rows)" in capsys.readouterr().out
    assert "has a sequence head; it cannot read a token task's inputs" in _export_error(capsys, classifier, tmp_path / "out2", "--task-config",
                                          _write(tmp_path / "bad.yaml", {"task": {"type": "token", "dev": "x"}}))


def _write(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def test_an_fp32_graph_beyond_the_tolerance_is_refused_and_nothing_is_written(classifier, tmp_path, monkeypatch):
    real_run = stages.export.OnnxModel.run
    monkeypatch.setattr(stages.export.OnnxModel, "run", lambda self, batch: real_run(self, batch) + 0.01)
    out = tmp_path / "refused"
    with pytest.raises(ModelError, match=r"differs from PyTorch by 0\.01 \(tolerance 0\.001\); nothing was written"):
        run_export(from_dict(ExportConfig, {"model": str(classifier), "output_dir": str(out), "int8": True}))
    assert list(tmp_path.iterdir()) == []


def _export_error(capsys, *args) -> str:
    capsys.readouterr()  # drop what the test's own setup printed (save_pretrained's progress bars)
    assert cli_main(["export", *map(str, args)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_a_folder_without_a_model_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "is not a model folder (no config.json or bilstm_config.json)" in _export_error(
        capsys, tmp_path / "empty", tmp_path / "out")
    assert "is not a model folder" in _export_error(capsys, tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architectures_are_refused_in_one_line(tmp_path, capsys):
    GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=16, bos_token_id=0,
                         eos_token_id=0)).save_pretrained(tmp_path / "gpt2")
    assert "unsupported architecture GPT2Model (model_type gpt2)" in _export_error(
        capsys, tmp_path / "gpt2", tmp_path / "out")
    save_bert(tmp_path / "mc", BertForMultipleChoice)
    assert "unsupported architecture BertForMultipleChoice" in _export_error(capsys, tmp_path / "mc", tmp_path / "o")


def test_an_existing_output_needs_overwrite(classifier, classifier_export, tmp_path, capsys):
    out = tmp_path / "again"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "already exists; pass --overwrite" in _export_error(capsys, classifier, out)
    assert "is not a tinydistill export; refusing to replace it" in _export_error(capsys, classifier, out,
                                                                                    "--overwrite")
    (out / "keep.txt").unlink()
    assert cli_main(["export", str(classifier), str(out), "--overwrite"]) == 0
    assert (out / "model.onnx").is_file() and not (out / "model.int8.onnx").exists()


def test_opset_outside_the_exporters_range_is_a_config_error(classifier, tmp_path):
    with pytest.raises(ConfigError, match=r"opset: must be in \[14, 20\], got 9"):
        from_dict(ExportConfig, {"model": str(classifier), "output_dir": str(tmp_path / "o"), "opset": 9})


@pytest.fixture(scope="module")
def teacher_classifier(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("teacher") / "teacher", BertForSequenceClassification, seed=1,
                     layers=4, **LABELS)


def test_evaluate_reports_teacher_student_onnx_and_int8_rows(teacher_classifier, classifier, classifier_export,
                                                             sentiment, tmp_path):
    table = run_evaluate(from_dict(EvaluateConfig, {
        "teacher": str(teacher_classifier), "student": str(classifier), "onnx_dir": str(classifier_export),
        "task": task_section(sentiment), "output_dir": str(tmp_path / "report"),
        "latency": {"batch_sizes": [1, 4], "min_seconds": 0.02, "rounds": 2},
    }))
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = report["models"]
    assert list(rows) == ["teacher", "student", "student onnx", "student onnx int8"]
    assert [(r["runtime"], r["precision"]) for r in rows.values()] == [
        ("pytorch", "fp32"), ("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    assert rows["student onnx"]["metrics"] == rows["student"]["metrics"]  # the same logits, to 1e-4
    assert rows["student onnx int8"]["size_mb"] < rows["student onnx"]["size_mb"]
    assert rows["student onnx"]["parameters"] == rows["student"]["parameters"]
    for row in rows.values():
        for kind in ("latency", "latency_end_to_end"):
            assert set(row[kind]) == {"1", "4"} and row[kind]["4"]["repeats"] >= 2
            assert row[kind]["1"]["spread_percent"] >= 0
    for name in rows:
        assert f"| {name} |" in table
    assert "end-to-end ms/example @1" in table and "Size (MB)" in table
    assert (tmp_path / "report" / "deployment.png").read_bytes().startswith(b"\x89PNG")


def test_evaluate_reads_an_exported_bilstm_student(teacher_classifier, sentiment, tmp_path):
    vocab = BiLSTMVocab.build(CHINESE_SENTENCES, "char")
    torch.manual_seed(0)
    save_bilstm(BiLSTMClassifier(BiLSTMModelConfig(vocab_size=len(vocab), num_labels=2, embedding_dim=16,
                                                   hidden_size=16, mlp_hidden=16, **LABELS)), vocab, tmp_path / "lstm")
    run_export(from_dict(ExportConfig, {"model": str(tmp_path / "lstm"), "output_dir": str(tmp_path / "onnx")}))
    run_evaluate(from_dict(EvaluateConfig, {
        "teacher": str(teacher_classifier), "student": str(tmp_path / "lstm"), "onnx_dir": str(tmp_path / "onnx"),
        "task": task_section(sentiment), "output_dir": str(tmp_path / "report"), "latency": {"enabled": False}}))
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["models"]
    assert list(rows) == ["teacher", "student", "student onnx"]  # exported without --int8: no int8 row
    assert rows["student onnx"]["metrics"] == rows["student"]["metrics"]


def test_evaluate_refuses_an_onnx_dir_that_is_not_an_export_of_the_student(teacher_classifier, classifier,
                                                                          classifier_export, sentiment, tmp_path):
    def evaluate(student: Path, onnx_dir: Path):
        run_evaluate(from_dict(EvaluateConfig, {
            "teacher": str(teacher_classifier), "student": str(student), "onnx_dir": str(onnx_dir),
            "task": task_section(sentiment), "output_dir": str(tmp_path / "report")}))

    with pytest.raises(ModelError, match="is not a tinydistill export"):
        evaluate(classifier, classifier)
    with pytest.raises(ModelError, match=f"was exported from {classifier}, not from the student {teacher_classifier}"):
        evaluate(teacher_classifier, classifier_export)


def test_the_run_exports_the_student_and_ends_with_its_int8_row(teacher_classifier, classifier, sentiment, tmp_path):
    task = task_section(sentiment)
    summary = run_pipeline(from_dict(RunConfig, {
        "run_dir": str(tmp_path / "run"),
        "finetune": {"use": str(teacher_classifier)}, "task": {"use": str(classifier)},
        "export": {"model": "${task}", "int8": True, "task": task},
        "evaluate": {"teacher": "${finetune}", "student": "${task}", "onnx_dir": "${export}", "task": task,
                     "latency": {"batch_sizes": [1], "min_seconds": 0.01, "rounds": 1, "end_to_end": False}},
    }))
    lines = summary.splitlines()
    assert lines[-4] == f"int8 student: {tmp_path / 'run' / 'export' / 'model.int8.onnx'}"
    assert lines[-3].startswith("| Model |") and lines[-1].startswith("| student onnx int8 | ")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["export"]["status"] == "finished"
