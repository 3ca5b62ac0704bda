"""The teacher-logits cache of prediction-layer distillation.

The teacher's logits over a transfer set are computed once, each rank doing a contiguous shard, and
stored as a `datasets` column under `cache_dir/<key>/` (Arrow, memory-mapped). The key hashes the
teacher's weights (and dtype) and the transfer set's token ids, so a changed teacher or changed data
misses the cache and is recomputed; a hit runs no teacher forward at all. An ensemble caches each
teacher under its own key and attaches one column per teacher (`column="teacher_logits_1"`, ...).

    cache_dir/<key>/logits/      save_to_disk dataset, one `teacher_logits` column, rows in order
    cache_dir/<key>/meta.json    teacher, fingerprints, rows
    cache_dir/.<key>.lock        held while a run builds the entry (in .<key>.tmp-XXXX, then renamed)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import DataError
from pipeline.tasks.data import dataset_fingerprint, predict_logits
from pipeline.training.checkpoints import read_json, write_json

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

    Runs that share a cache directory (a learning-rate sweep) may build the same entry at once: the
    main process of each holds a lock on the key while it builds, so one run computes and the others
    then read its entry. An entry is built in a temp folder of its own and appears by one rename.
    The cache entry always stores the column as `teacher_logits`, so one teacher's entry serves it
    alone and as any member of an ensemble."""
    import datasets

    root = Path(cache_dir).expanduser()
    teacher_fp = model_fingerprint(teacher)
    data_fp = dataset_fingerprint(dataset)
    key = cache_key(teacher_fp, data_fp)
    entry = root / key
    if _published(entry):
        log(f"teacher logits: cache hit {entry}")
    else:
        with _key_lock(accelerator, root / f".{key}.lock"):
            if _published(entry):  # another run built it while this one waited
                log(f"teacher logits: cache hit {entry} (built by another run)")
            else:
                _compute(accelerator, dataset, teacher, entry, batch_size, pad_id, log,
                         {"teacher": teacher_name, "teacher_fingerprint": teacher_fp, "data_fingerprint": data_fp,
                          "rows": len(dataset)})
    meta = read_json(entry / "meta.json")
    logits = datasets.load_from_disk(str(entry / "logits"))
    if column != "teacher_logits":
        logits = logits.rename_column("teacher_logits", column)
    if meta["rows"] != len(dataset) or len(logits) != len(dataset):
        raise DataError(f"teacher-logits cache {entry} holds {len(logits)} rows for {len(dataset)}; delete it")
    return datasets.concatenate_datasets([dataset, logits], axis=1), entry


def _published(entry: Path) -> bool:
    return (entry / "meta.json").is_file()


@contextmanager
def _key_lock(accelerator, path: Path) -> Iterator[None]:
    """An exclusive lock on one cache key, held by the main process while every rank works under it."""
    handle = None
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
        fcntl.flock(handle, fcntl.LOCK_EX)  # released on close, or by the OS if the process dies
    accelerator.wait_for_everyone()
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


def _compute(accelerator, dataset, teacher, entry: Path, batch_size: int, pad_id: int, log, meta: dict) -> None:
    """Each rank scores its contiguous shard and saves it as Arrow; the main process joins the shards into
    one column in a temp folder of its own, writes meta.json there, and renames the folder into place."""
    import datasets
    from accelerate.utils import broadcast_object_list

    from pipeline.data.dataset_files import shard_range

    work = [None]
    if accelerator.is_main_process:
        work = [tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.tmp-")]
        log(f"teacher logits: computing for {len(dataset)} rows into {entry}")
    if accelerator.num_processes > 1:
        work = broadcast_object_list(work)
    work_dir = Path(work[0])
    rows = shard_range(len(dataset), accelerator.process_index, accelerator.num_processes)
    shard = dataset.select(rows)
    if len(shard):
        logits = predict_logits(teacher, shard, batch_size, pad_id, accelerator.device)
        _logits_dataset(logits).save_to_disk(str(work_dir / "parts" / f"rank{accelerator.process_index:05d}"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        parts = [datasets.load_from_disk(str(part)) for part in sorted((work_dir / "parts").iterdir())]
        datasets.concatenate_datasets(parts).save_to_disk(str(work_dir / "logits"))
        del parts
        shutil.rmtree(work_dir / "parts")
        write_json(work_dir / "meta.json", meta)
        if entry.exists():  # a folder without meta.json: left by an interrupted build of an old version
            shutil.rmtree(entry)
        os.rename(work_dir, entry)
    accelerator.wait_for_everyone()


def _logits_dataset(logits: list[np.ndarray]):
    """A `teacher_logits` column straight from the arrays (Arrow list offsets, no per-float Python objects):
    a list of floats per row (sequence tasks), or a list of per-token lists (token tasks)."""
    import datasets
    import pyarrow as pa

    values = pa.array(np.concatenate([np.asarray(x, dtype=np.float32).reshape(-1) for x in logits]))
    lengths = np.array([len(x) for x in logits])
    column = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32()), values)
    feature = datasets.Sequence(datasets.Value("float32"))
    if logits[0].ndim == 2:
        width = logits[0].shape[1]
        per_token = pa.ListArray.from_arrays(pa.array(np.arange(0, len(values) + 1, width), pa.int32()), values)
        column = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32()), per_token)
        feature = datasets.Sequence(feature)
    table = pa.table({"teacher_logits": column})
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=datasets.Features({"teacher_logits": feature})))
