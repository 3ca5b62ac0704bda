"""Hub models and datasets: `org/name@revision` pins a revision; downloads use the standard Hugging Face
caches and are kept between runs (nothing here reaches the network: the loaders are stand-ins)."""

from __future__ import annotations

import pytest

import pipeline.data.dataset_files
import pipeline.models.loading
from pipeline.models.hub import split_revision


@pytest.mark.parametrize("source, expected", [
    ("bert-base-chinese", ("bert-base-chinese", None)),
    ("hfl/chinese-roberta-wwm-ext@v1.0", ("hfl/chinese-roberta-wwm-ext", "v1.0")),
    ("org/name@0a1b2c3d", ("org/name", "0a1b2c3d")),
    ("./runs/teacher@old", ("./runs/teacher@old", None)),  # a local path keeps its @
    ("/data/a/b@c", ("/data/a/b@c", None)),
])
def test_split_revision(source, expected):
    assert split_revision(source) == expected


def test_an_existing_local_folder_with_an_at_sign_is_a_path(tmp_path, monkeypatch):
    (tmp_path / "teacher@v2").mkdir()
    monkeypatch.chdir(tmp_path)
    assert split_revision("teacher@v2") == ("teacher@v2", None)


def test_model_loaders_pass_the_revision_to_transformers(monkeypatch):
    seen = []

    def fake_from_pretrained(name, **kwargs):
        seen.append((name, kwargs.get("revision")))
        return "loaded"

    monkeypatch.setattr(pipeline.models.loading.AutoConfig, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(pipeline.models.loading.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(pipeline.models.loading.AutoModel, "from_pretrained", fake_from_pretrained)
    pipeline.models.loading.load_model_config("org/teacher@v2", "teacher")
    pipeline.models.loading.load_tokenizer("org/teacher@v2")
    pipeline.models.loading.load_pretrained(pipeline.models.loading.AutoModel, "org/teacher@v2", "teacher")
    assert seen == [("org/teacher", "v2")] * 3


def test_hub_datasets_take_a_revision_and_the_standard_cache(monkeypatch):
    import datasets

    seen = {}

    def fake_load_dataset(path, name=None, **kwargs):
        seen.update(path=path, name=name, **kwargs)
        return "dataset"

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert pipeline.data.dataset_files.load_input("org/reviews@refs/pr/1", "auto", "train", "zh") == "dataset"
    assert (seen["path"], seen["name"], seen["revision"], seen["cache_dir"]) == ("org/reviews", "zh", "refs/pr/1",
                                                                                 None)


def test_task_data_is_read_through_the_standard_datasets_cache(tmp_path, monkeypatch):
    from pipeline.tasks.data import TaskConfig, load_task_split

    calls = []
    real = pipeline.data.dataset_files.load_input

    def recording(*args, **kwargs):
        calls.append(args[4] if len(args) > 4 else kwargs.get("cache_dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.data.dataset_files, "load_input", recording)
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a", "label": "x"}\n', encoding="utf-8")
    load_task_split(TaskConfig(type="classification", train=str(train)), "train")
    assert calls == [None]  # None: HF_DATASETS_CACHE, not a folder of tinydistill's own


def test_augment_reads_its_input_through_the_standard_cache_and_keeps_it(tmp_path, monkeypatch):
    import augment.build
    from pipeline.config import from_dict
    from tests.augment_helpers import SENTENCES_ZH, cilin_file, write_csv

    calls = []
    real = augment.build.load_input

    def recording(*args, **kwargs):
        calls.append(args[4] if len(args) > 4 else kwargs.get("cache_dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(augment.build, "load_input", recording)
    csv = write_csv(tmp_path / "reviews.csv", ["review", "label"], [[t, i % 2] for i, t in enumerate(SENTENCES_ZH)])
    cfg = from_dict(augment.build.AugmentConfig, {
        "output_dir": str(tmp_path / "out"), "input": {"path": str(csv)},
        "columns": {"text": "review", "label": "label"},
        "candidates": {"dictionary": {"path": str(cilin_file(tmp_path / "cilin.txt"))}},
        "ops": {"n_variants": 2}, "batch_size": 8,
    })
    augment.build.run_augment(cfg)
    assert calls == [None]
