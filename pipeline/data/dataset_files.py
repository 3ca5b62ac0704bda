"""Reading datasets from files, `save_to_disk` folders or the hub, with one-line errors; row shards."""

from __future__ import annotations

import uuid
from pathlib import Path

from pipeline.errors import DataError
from pipeline.models.hub import split_revision

_BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),
}


def load_input(path: str, format: str, split: str, name: str | None, cache_dir: Path | None = None):
    """A `datasets.Dataset` from a local file, a `save_to_disk` folder, or a hub id (`org/name@revision`
    pins a revision), memory-mapped. `cache_dir` None: the standard HF_DATASETS_CACHE."""
    import datasets

    cache = str(cache_dir) if cache_dir is not None else None

    local = Path(path)
    try:
        if local.is_dir() and format in ("auto", "disk"):
            data = datasets.load_from_disk(str(local))
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise DataError(f"input.split: {split!r} is not in {path} (splits: {', '.join(data)})")
                data = data[split]
            return data
        if local.is_file():
            suffix = {"tsv": ".tsv", "csv": ".csv", "json": ".json", "parquet": ".parquet", "text": ".txt"}
            builder, kwargs = _BUILDERS.get(suffix.get(format, local.suffix.lower()), (None, {}))
            if builder is None:
                raise DataError(f"input.format: cannot tell the format of {path}; set input.format")
            if local.stat().st_size == 0:
                raise DataError(f"input.path: {path} is empty (no examples)")
            return datasets.load_dataset(
                builder, data_files=str(local), split="train", cache_dir=cache, **kwargs
            )
        if format in ("auto", "hub") and not path.startswith((".", "/", "~")):
            hub_id, revision = split_revision(path)
            return datasets.load_dataset(hub_id, name, split=split, cache_dir=cache, revision=revision)
    except DataError:
        raise
    except ValueError as err:
        if "corresponds to no data" in str(err):  # datasets' words for a file with a header and no rows
            raise DataError(f"input.path: {path} has no examples") from None
        raise DataError(f"input.path: cannot read {path}: {_first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 -- datasets/pyarrow/pandas/hub errors all mean "cannot read this input"
        raise DataError(f"input.path: cannot read {path}: {_first_line(err)}") from None
    raise DataError(f"input.path: not found: {path}")


def map_cache_file(dataset) -> str | None:
    """Where a `dataset.map` over this dataset writes: None (datasets' choice, beside the cached files the
    loader wrote) unless the dataset was read from a `save_to_disk` folder. That folder is another stage's
    output (a transfer set); a cache file written into it changes that stage's stamp, and with it the key
    of every stage that reads it, so the next run re-ran a finished stage. There: datasets' session
    temporary directory, removed when the process ends."""
    files = getattr(dataset, "cache_files", None)
    if not files or not (Path(files[0]["filename"]).parent / "state.json").is_file():  # save_to_disk's marker
        return None
    from datasets.fingerprint import get_temporary_cache_files_directory

    return str(Path(get_temporary_cache_files_directory()) / f"cache-{uuid.uuid4().hex}.arrow")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def shard_range(n_rows: int, index: int, count: int) -> range:
    """Rows of contiguous shard `index` of `count`, as `datasets.Dataset.shard(contiguous=True)` cuts them."""
    size, extra = divmod(n_rows, count)
    start = size * index + min(index, extra)
    return range(start, start + size + (1 if index < extra else 0))
