"""`finetune` early stopping on tiny random models: the dev plateau ends training, the best-dev model is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CHINESE_SENTENCES, make_bert, save_tokenizer
from safetensors.torch import load_file

from pipeline.config import from_dict
from pipeline.errors import ConfigError
from stages.finetune import FinetuneConfig, run_finetune

SENTIMENT = ["pos", "neg", "pos", "neg", "neg", "pos", "pos", "pos"]
CAP = 30  # epochs; 32 train rows at batch 8 are 4 steps an epoch


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sentiment")
    rows = "".join(json.dumps({"text": s, "label": label}, ensure_ascii=False) + "\n"
                   for s, label in zip(CHINESE_SENTENCES, SENTIMENT))
    (root / "train.jsonl").write_text(rows * 4, encoding="utf-8")
    (root / "dev.jsonl").write_text(rows, encoding="utf-8")
    tokenizer = save_tokenizer(root / "base", CHINESE_SENTENCES)
    make_bert(root / "base", vocab_size=len(tokenizer), layers=2, hidden=32, heads=4)
    return {"train": root / "train.jsonl", "dev": root / "dev.jsonl", "base": root / "base"}


def config(files: dict, out: Path, dev: bool = True, **extra) -> dict:
    task = {"type": "classification", "train": str(files["train"]), "max_seq_len": 32}
    if dev:
        task["dev"] = str(files["dev"])
    return {"model": str(files["base"]), "task": task, "output_dir": str(out),
            "train": {"batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.0, "epochs": CAP, "progress_bar": False,
                      "log_every": 1, "save_every": 1000},
            **extra}


def events(out: Path, name: str) -> list[dict]:
    return [e for e in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if e.get("event") == name]


@pytest.fixture(scope="module")
def stopped(files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stopped") / "ft"
    run_finetune(from_dict(FinetuneConfig, config(files, out, early_stopping={"patience": 4})))
    return out


def test_patience_stops_fine_tuning_four_epochs_after_the_best_dev_score(stopped):
    metrics = json.loads((stopped / "metrics.json").read_text())
    dev = events(stopped, "dev")
    best = max(dev, key=lambda e: e["dev_accuracy"])  # the first of equal scores, as training keeps it
    assert metrics["stopped_early"] is True and metrics["epochs_cap"] == CAP
    assert metrics["best_step"] == best["step"] and metrics["best_epoch"] == best["step"] / 4
    assert metrics["epochs_used"] == metrics["best_epoch"] + 4 < CAP
    assert len(dev) == metrics["epochs_used"]  # one evaluation an epoch, none after the stop
    assert [e["step"] for e in events(stopped, "early_stop")] == [dev[-1]["step"]]
    assert metrics["dev"]["accuracy"] == best["dev_accuracy"]


def test_the_saved_teacher_is_the_best_dev_model_not_the_last(stopped):
    saved = load_file(stopped / "model.safetensors")
    best = load_file(stopped / "best" / "model.safetensors")
    last_step = int(json.loads((stopped / "metrics.json").read_text())["epochs_used"] * 4)
    last = load_file(stopped / "checkpoints" / f"step_{last_step:06d}" / "model.safetensors")
    for name in best:
        torch.testing.assert_close(saved[name], best[name], rtol=0, atol=0)
    assert any(not torch.equal(saved[name], last[name]) for name in best)  # four epochs were trained past it


def test_without_early_stopping_training_runs_to_the_cap(files, tmp_path):
    out = tmp_path / "ft"
    run_finetune(from_dict(FinetuneConfig, config(files, out, train={
        **config(files, out)["train"], "epochs": 3})))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_used"] == metrics["epochs_cap"] == 3 and metrics["stopped_early"] is False
    assert events(out, "early_stop") == []


def test_a_run_killed_after_the_stop_resumes_and_stops_at_once(files, tmp_path, monkeypatch, stopped):
    import stages.finetune

    out = tmp_path / "ft"
    real_load = stages.finetune.load_pretrained

    def killed_before_the_best_model_is_loaded(model_class, path, role, **kwargs):
        if role == "best model":
            raise KeyboardInterrupt("simulated kill")
        return real_load(model_class, path, role, **kwargs)

    monkeypatch.setattr(stages.finetune, "load_pretrained", killed_before_the_best_model_is_loaded)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(from_dict(FinetuneConfig, config(files, out, early_stopping={"patience": 4})))
    monkeypatch.undo()
    stop_step = events(out, "early_stop")[0]["step"]
    run_finetune(from_dict(FinetuneConfig, {**config(files, out, early_stopping={"patience": 4}),
                                            "train": {**config(files, out)["train"], "resume_from": "auto"}}))
    assert len(events(out, "start")) == 2 and len(events(out, "early_stop")) == 1  # no step after the resume
    assert max(e["step"] for e in events(out, "dev")) == stop_step
    assert json.loads((out / "metrics.json").read_text())["epochs_used"] == stop_step / 4


FLOOR = [0.0, 0.0, 0.0, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]  # dev scores by epoch: 3 epochs on the floor, then a climb


@pytest.fixture
def floor_first(monkeypatch):
    """Dev scores that sit on their starting value for three epochs, as NER's entity F1 does while a model still
    tags every token O, and then climb: the scripted scores replace the real ones, one an evaluation."""
    from pipeline.training import train_loop

    scores = iter(FLOOR)
    monkeypatch.setattr(train_loop, "score_predictions", lambda *args: {"accuracy": next(scores)})


def test_patience_alone_gives_up_on_the_floor(files, tmp_path, floor_first):
    out = tmp_path / "ft"
    run_finetune(from_dict(FinetuneConfig, config(files, out, early_stopping={"patience": 2})))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["epochs_used"], metrics["best_epoch"]) == (3, 1)  # 0.0 ties 0.0: two evaluations without a best


def test_patience_counts_from_the_start_epoch_so_a_score_still_on_its_floor_is_not_a_plateau(files, tmp_path,
                                                                                           floor_first):
    out = tmp_path / "ft"
    run_finetune(from_dict(FinetuneConfig, config(files, out, early_stopping={"patience": 2, "start_epoch": 3})))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["epochs_used"], metrics["best_epoch"]) == (7, 5)  # the climb to 0.6, then two epochs of ties
    assert [e["dev_accuracy"] for e in events(out, "dev")] == FLOOR[:7]
    assert events(out, "early_stop")[0]["start_step"] == 3 * 4  # 4 steps an epoch


def test_a_run_still_on_its_floor_at_the_start_epoch_stops_patience_epochs_later(files, tmp_path, monkeypatch):
    from pipeline.training import train_loop

    monkeypatch.setattr(train_loop, "score_predictions", lambda *args: {"accuracy": 0.0})
    out = tmp_path / "ft"
    run_finetune(from_dict(FinetuneConfig, config(files, out, early_stopping={"patience": 2, "start_epoch": 4})))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["epochs_used"], metrics["best_epoch"], metrics["stopped_early"]) == (6, 1, True)


@pytest.mark.parametrize("change, message", [
    ({"early_stopping": {"patience": 0}}, r"^early_stopping\.patience: must be >= 1, got 0$"),
    ({"early_stopping": {"metric": "macro_f1"}},
     r"^early_stopping\.metric: only used with early_stopping\.patience; set both or neither$"),
    ({"early_stopping": {"start_epoch": 2}},
     r"^early_stopping\.start_epoch: only used with early_stopping\.patience; set both or neither$"),
    ({"early_stopping": {"patience": 2, "start_epoch": -1}}, r"^early_stopping\.start_epoch: must be >= 0, got -1$"),
    ({"early_stopping": {"patience": 2, "start_epoch": CAP}},
     rf"^early_stopping\.start_epoch: {CAP} leaves patience no epoch to count under train\.epochs {CAP}$"),
    ({"early_stopping": {"patience": 2}, "dev": False},
     r"^early_stopping\.patience: needs task\.dev \(the dev metric decides when to stop\)$"),
])
def test_bad_early_stopping_settings_are_refused_at_start_up(files, tmp_path, change, message):
    change = dict(change)
    dev = change.pop("dev", True)
    with pytest.raises(ConfigError, match=message):
        from_dict(FinetuneConfig, config(files, tmp_path / "ft", dev=dev, **change))


def test_a_metric_the_task_does_not_have_is_refused_before_anything_is_written(files, tmp_path):
    out = tmp_path / "ft"
    cfg = from_dict(FinetuneConfig, config(files, out, early_stopping={"patience": 2, "metric": "entity_f1"}))
    with pytest.raises(ConfigError, match=r"^early_stopping\.metric: 'entity_f1' is not a classification metric "
                                          r"here \(one of: accuracy, macro_f1, mcc\)$"):
        run_finetune(cfg)
    assert not out.exists()
