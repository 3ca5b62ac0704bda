"""The teacher-logits cache of prediction-layer distillation.

The teacher's logits over a transfer set are computed once, each rank doing a contiguous shard, and
stored as a `datasets` column under `cache_dir/<key>/` (Arrow, memory-mapped). The key hashes the
teacher's weights (and dtype) and the transfer set's token ids, so a changed teacher or changed data
misses the cache and is recomputed; a hit runs no teacher forward at all. An ensemble caches each
teacher under its own key and attaches one column per teacher (`column="teacher_logits_1"`, ...).

    cache_dir/<key>/logits/      save_to_disk dataset, one `teacher_logits` column, rows in order
    cache_dir/<key>/meta.json    teacher, fingerprints, rows, task type (written last)
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoints import read_json, write_json
from pipeline.errors import DataError
from pipeline.tasks import dataset_fingerprint, predict_logits

DEFAULT_CACHE_DIR = Path("~/.cache/tinydistill/teacher_logits")


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's class, parameter names, dtypes and values."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(teacher_fingerprint: str, data_fingerprint: str) -> str:
    return hashlib.sha256(f"{teacher_fingerprint}|{data_fingerprint}".encode()).hexdigest()[:24]


def with_teacher_logits(accelerator, dataset, teacher: torch.nn.Module, teacher_name: str, cache_dir: str | Path,
                        batch_size: int, pad_id: int, log: Callable[[str], None] = print,
                        column: str = "teacher_logits"):
    """`dataset` plus the teacher's logits as `column`, from the cache or computed (sharded) and cached.

    The cache entry always stores the column as `teacher_logits`, so one teacher's entry serves it
    alone and as any member of an ensemble."""
    import datasets

    root = Path(cache_dir).expanduser()
    teacher_fp = model_fingerprint(teacher)
    data_fp = dataset_fingerprint(dataset)
    entry = root / cache_key(teacher_fp, data_fp)
    if not (entry / "meta.json").is_file():
        _compute(accelerator, dataset, teacher, entry, batch_size, pad_id, log)
        if accelerator.is_main_process:
            write_json(entry / "meta.json", {"teacher": teacher_name, "teacher_fingerprint": teacher_fp,
                                             "data_fingerprint": data_fp, "rows": len(dataset)})
        accelerator.wait_for_everyone()
    else:
        log(f"teacher logits: cache hit {entry}")
    meta = read_json(entry / "meta.json")
    logits = datasets.load_from_disk(str(entry / "logits"))
    if column != "teacher_logits":
        logits = logits.rename_column("teacher_logits", column)
    if meta["rows"] != len(dataset) or len(logits) != len(dataset):
        raise DataError(f"teacher-logits cache {entry} holds {len(logits)} rows for {len(dataset)}; delete it")
    return datasets.concatenate_datasets([dataset, logits], axis=1), entry


def _compute(accelerator, dataset, teacher, entry: Path, batch_size: int, pad_id: int, log) -> None:
    """Each rank scores its contiguous shard; the main process joins the shards into one column."""
    import datasets

    from pipeline.dataset_files import shard_range

    parts = entry.with_name(f".{entry.name}.parts")
    if accelerator.is_main_process:
        parts.mkdir(parents=True, exist_ok=True)
        log(f"teacher logits: computing for {len(dataset)} rows into {entry}")
    accelerator.wait_for_everyone()
    rows = shard_range(len(dataset), accelerator.process_index, accelerator.num_processes)
    shard = dataset.select(rows)
    logits = predict_logits(teacher, shard, batch_size, pad_id, accelerator.device) if len(shard) else []
    torch.save([np.asarray(x, dtype=np.float32) for x in logits], parts / f"rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        joined = []
        for rank in range(accelerator.num_processes):
            joined.extend(torch.load(parts / f"rank{rank}.pt", weights_only=False))
        feature = datasets.Sequence(datasets.Value("float32"))
        if joined and joined[0].ndim == 2:
            feature = datasets.Sequence(feature)
        column = datasets.Dataset.from_dict({"teacher_logits": [x.tolist() for x in joined]},
                                            features=datasets.Features({"teacher_logits": feature}))
        temp = entry.with_name(f".{entry.name}.tmp")
        if temp.exists():
            shutil.rmtree(temp)
        column.save_to_disk(str(temp / "logits"))
        if entry.exists():
            shutil.rmtree(entry)
        temp.rename(entry)
        shutil.rmtree(parts, ignore_errors=True)
    accelerator.wait_for_everyone()
