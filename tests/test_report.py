"""Latency on a tiny random BERT, the report files from a hand-made report dict, training-curve plots."""

import json
import sys

import pytest
import torch
from conftest import CHINESE_SENTENCES
from transformers import AutoTokenizer, BertModel

from pipeline.errors import DataError
from pipeline.models.loading import count_parameters
from pipeline.shipping.report import (
    complete_report,
    format_report_table,
    latency_batches,
    measure_latency,
    plot_training_curves,
    read_logged_steps,
    speedup,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_bert(teacher_dir):
    return BertModel.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(teacher_dir)


def test_latency_batches_cycle_texts_and_pad_to_the_longest_in_each_batch(tiny_bert):
    _, tokenizer = tiny_bert
    texts = ["短句", "这是一个长一点的句子"]
    batches = latency_batches(tokenizer, texts, None, max_seq_len=64, batch_sizes=(1, 5))
    assert batches[1]["input_ids"].shape == (1, len("短句") + 2)  # [CLS] + 2 chars + [SEP], no padding
    assert batches[5]["input_ids"].shape == (5, len(texts[1]) + 2)
    assert batches[5]["input_ids"][2].tolist() == batches[5]["input_ids"][0].tolist()  # cycled
    assert batches[5]["attention_mask"][0].sum() == len("短句") + 2


def test_latency_batches_truncate_sentence_pairs_at_max_seq_len(tiny_bert):
    _, tokenizer = tiny_bert
    batches = latency_batches(tokenizer, CHINESE_SENTENCES[:2], CHINESE_SENTENCES[2:4], max_seq_len=16,
                              batch_sizes=(2,))
    assert batches[2]["input_ids"].shape == (2, 16)
    assert batches[2]["token_type_ids"].max() == 1


def test_measure_latency_times_each_batch_size_and_restores_threads_and_mode(tiny_bert):
    model, tokenizer = tiny_bert
    model.train()
    batches = latency_batches(tokenizer, CHINESE_SENTENCES, None, max_seq_len=32, batch_sizes=(1, 4))
    before = torch.get_num_threads()
    requested = 1 if before != 1 else 2
    result = measure_latency(model, batches, warmup=1, min_repeats=3, min_seconds=0.0, threads=requested)
    assert torch.get_num_threads() == before
    assert model.training
    assert sorted(result) == [1, 4]
    for size, row in result.items():
        assert row["repeats"] >= 3
        assert row["ms_per_batch"] > 0
        assert row["ms_per_example"] == pytest.approx(row["ms_per_batch"] / size)


def test_measure_latency_rejects_a_batch_whose_rows_disagree_with_its_size(tiny_bert):
    model, tokenizer = tiny_bert
    batches = latency_batches(tokenizer, CHINESE_SENTENCES, None, max_seq_len=32, batch_sizes=(4,))
    with pytest.raises(ValueError, match="batch 8 holds input_ids with 4 rows"):
        measure_latency(model, {8: batches[4]}, min_seconds=0.0)


def test_speedup_divides_teacher_by_student_time_per_example_at_shared_sizes():
    teacher = {1: {"ms_per_example": 10.0}, 32: {"ms_per_example": 2.0}}
    student = {"1": {"ms_per_example": 2.5}, "32": {"ms_per_example": 0.25}, "64": {"ms_per_example": 0.2}}
    assert speedup(teacher, student) == {1: pytest.approx(4.0), 32: pytest.approx(8.0)}


def _hand_report() -> dict:
    def latency(ms_at_1: float, ms_at_32: float) -> dict:
        return {1: {"ms_per_batch": ms_at_1, "ms_per_example": ms_at_1, "repeats": 10},
                32: {"ms_per_batch": 32 * ms_at_32, "ms_per_example": ms_at_32, "repeats": 10}}

    return {
        "task": {"name": "chnsenticorp", "type": "classification"},
        "main_metric": "accuracy",
        "models": {
            "teacher": {"path": "runs/teacher", "metrics": {"accuracy": 0.95, "macro_f1": 0.9},
                        "parameters": 102_000_000, "latency": latency(12.0, 2.0)},
            "student": {"path": "runs/student", "metrics": {"accuracy": 0.931, "macro_f1": 0.88},
                        "parameters": 12_750_000, "latency": latency(3.0, 0.25)},
        },
        "retention_percent": 1234.0,  # stale: must be recomputed
    }


def test_write_report_computes_retention_ratio_and_speedup(tmp_path):
    json_path, markdown_path = write_report(_hand_report(), tmp_path / "report")
    saved = json.loads(json_path.read_text(encoding="utf-8"))
    assert saved["retention_percent"] == pytest.approx(98.0)  # 0.931 / 0.95
    assert saved["parameter_ratio"] == pytest.approx(8.0)  # 102M / 12.75M
    assert saved["speedup"] == {"1": pytest.approx(4.0), "32": pytest.approx(8.0)}
    assert saved["models"]["student"]["latency"]["32"]["ms_per_example"] == 0.25
    assert markdown_path.read_text(encoding="utf-8").startswith("# Distillation report: chnsenticorp")


def test_report_table_has_the_expected_header_and_numbers():
    lines = format_report_table(_hand_report()).splitlines()
    assert lines[0] == ("| Model | accuracy | macro_f1 | Retention % | Params (M) | Compression | "
                        "ms/example @1 | ms/example @32 | Speed-up @1 | Speed-up @32 |")
    assert lines[2] == "| teacher | 0.9500 | 0.9000 | 100.0 | 102.00 | 1.00x | 12.000 | 2.000 | 1.00x | 1.00x |"
    assert lines[3] == "| student | 0.9310 | 0.8800 | 98.0 | 12.75 | 8.00x | 3.000 | 0.250 | 4.00x | 8.00x |"


def test_report_round_trips_through_json_with_string_batch_sizes(tmp_path):
    json_path, _ = write_report(_hand_report(), tmp_path)
    reloaded = json.loads(json_path.read_text(encoding="utf-8"))
    assert format_report_table(reloaded) == format_report_table(_hand_report())


def test_report_without_latency_shows_no_latency_columns_and_missing_teacher_score_as_dash():
    report = _hand_report()
    for model in report["models"].values():
        model.pop("latency")
    report["models"]["teacher"]["metrics"]["accuracy"] = 0.0
    table = format_report_table(report)
    assert "ms/example" not in table
    assert complete_report(report)["retention_percent"] is None
    assert "| student | 0.9310 | 0.8800 | – |" in table


def test_report_names_a_missing_main_metric():
    report = _hand_report()
    report["main_metric"] = "corr"
    with pytest.raises(ValueError, match="main_metric 'corr' is not in models.teacher.metrics"):
        complete_report(report)


def test_count_parameters_counts_frozen_parameters_too(tiny_bert):
    model, _ = tiny_bert
    expected = sum(p.numel() for p in model.parameters())
    model.embeddings.requires_grad_(False)
    try:
        assert count_parameters(model) == expected
    finally:
        model.embeddings.requires_grad_(True)


def _write_log(path, records: list, extra_lines: tuple[str, ...] = ()) -> None:
    lines = [json.dumps(record) for record in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_plot_training_curves_skips_event_lines_and_writes_a_png(tmp_path):
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [
        {"event": "start", "world_size": 1, "step": 0},
        {"step": 10, "epoch": 0, "loss": 4.0, "hidden": 3.0, "attention": 1.0},
        {"event": "skipped_lines", "count": 2},
        {"step": 20, "epoch": 0, "loss": 2.0, "hidden": 1.5, "attention": 0.5, "dev_accuracy": 0.6},
        {"step": 30, "epoch": 1, "loss": 1.0, "hidden": 0.7, "attention": 0.3},
    ], extra_lines=("", '{"step": 40, "loss": 0.'))  # a blank line and a line cut short by a crash
    assert [record["step"] for record in read_logged_steps(log)] == [10, 20, 30]
    output = plot_training_curves({"general": log, "task": log}, tmp_path / "plots" / "curves.png",
                                  keys=("loss", "hidden", "dev_accuracy"))
    assert output == tmp_path / "plots" / "curves.png"
    assert output.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in output.parent.iterdir()] == ["curves.png"]  # no temp file left behind


def test_plot_training_curves_returns_none_when_no_step_was_logged(tmp_path):
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [{"event": "start", "world_size": 1}])
    assert plot_training_curves({"general": log}, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


def test_plot_training_curves_returns_none_without_matplotlib(tmp_path, monkeypatch):
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [{"step": 1, "loss": 1.0}])
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    assert plot_training_curves({"general": log}, tmp_path / "curves.png") is None


def test_plot_training_curves_names_a_missing_log(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        plot_training_curves({"general": tmp_path / "absent.jsonl"}, tmp_path / "curves.png")


def _deployment_report() -> dict:
    report = _hand_report()
    rows = report["models"]
    rows["teacher"]["size_mb"], rows["student"]["size_mb"] = 408.0, 51.0
    rows["student onnx int8"] = {**rows["student"], "size_mb": 13.0, "runtime": "onnxruntime", "precision": "int8",
                                 "latency": {1: {"ms_per_example": 1.0, "spread_percent": 40.0}}}
    for row in rows.values():
        row["latency_end_to_end"] = {1: {"ms_per_example": row["latency"][1]["ms_per_example"] + 0.5}}
    return report


def test_report_table_adds_size_and_end_to_end_columns_when_the_rows_have_them():
    lines = format_report_table(_deployment_report()).splitlines()
    assert lines[0] == ("| Model | accuracy | macro_f1 | Retention % | Params (M) | Compression | Size (MB) | "
                        "ms/example @1 | ms/example @32 | Speed-up @1 | Speed-up @32 | end-to-end ms/example @1 |")
    assert lines[4] == ("| student onnx int8 | 0.9310 | 0.8800 | 98.0 | 12.75 | 8.00x | 13.00 | 1.000 | – | "
                        "12.00x | – | 1.500 |")


def test_report_md_says_when_a_latency_spread_is_large(tmp_path):
    _, markdown_path = write_report(_deployment_report(), tmp_path)
    text = markdown_path.read_text(encoding="utf-8")
    assert "above 25%: student onnx int8 @1 (model only): 40%. The machine was busy" in text
    _, quiet = write_report(_hand_report(), tmp_path / "quiet")
    assert "The machine was busy" not in quiet.read_text(encoding="utf-8")


def test_plot_deployment_draws_score_against_latency_and_skips_untimed_reports(tmp_path):
    from pipeline.shipping.report import plot_deployment

    assert plot_deployment(_deployment_report(), tmp_path / "deployment.png").read_bytes().startswith(PNG_MAGIC)
    untimed = _hand_report()
    for model in untimed["models"].values():
        model.pop("latency")
    assert plot_deployment(untimed, tmp_path / "none.png") is None


def test_time_interleaved_takes_turns_and_reports_median_and_spread():
    from pipeline.shipping.latency import time_interleaved

    calls = []
    result = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3,
                              seconds_per_round=0.0, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then the order rotates each round
    assert result["a"]["repeats"] == result["b"]["repeats"] == 3
    assert result["a"]["ms"] >= 0 and result["a"]["spread_percent"] >= 0
