"""Reading the task dataset and publishing an output folder atomically.

Outputs are built in a hidden temp folder beside the final one (`.NAME.tmp-XXXX`) that also holds the
datasets cache of the run, and renamed into place only when complete: a crash or an error leaves no
folder under the final name, and no cache files inside the user's input folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pipeline.errors import ConfigError, DataError

_BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),
}


def load_input(path: str, format: str, split: str, name: str | None, cache_dir: Path):
    """A `datasets.Dataset` from a local file, a `save_to_disk` folder, or a hub id (memory-mapped)."""
    import datasets

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
                builder, data_files=str(local), split="train", cache_dir=str(cache_dir), **kwargs
            )
        if format in ("auto", "hub") and not path.startswith((".", "/", "~")):
            return datasets.load_dataset(path, name, split=split, cache_dir=str(cache_dir))
    except DataError:
        raise
    except ValueError as err:
        if "corresponds to no data" in str(err):  # datasets' words for a file with a header and no rows
            raise DataError(f"input.path: {path} has no examples") from None
        raise DataError(f"input.path: cannot read {path}: {_first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 -- datasets/pyarrow/pandas/hub errors all mean "cannot read this input"
        raise DataError(f"input.path: cannot read {path}: {_first_line(err)}") from None
    raise DataError(f"input.path: not found: {path}")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def check_columns(dataset, wanted: dict[str, str | None], path: str) -> None:
    """Every configured column exists; the dataset is not empty."""
    for key, column in wanted.items():
        if column is not None and column not in dataset.column_names:
            raise DataError(
                f"columns.{key}: column {column!r} is not in {path} (columns: {', '.join(dataset.column_names)})"
            )
    if len(dataset) == 0:
        raise DataError(f"input.path: {path} has no examples")


def shard_range(n_rows: int, index: int, count: int) -> range:
    """Rows of contiguous shard `index` of `count`, as `datasets.Dataset.shard(contiguous=True)` cuts them."""
    size, extra = divmod(n_rows, count)
    start = size * index + min(index, extra)
    return range(start, start + size + (1 if index < extra else 0))


def refuse_finished(output_dir: Path, overwrite: bool) -> None:
    """Stop before any work if the output exists and may not be replaced."""
    if output_dir.exists() and not overwrite and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ConfigError(
            f"output_dir: {output_dir} already exists; pass --overwrite (overwrite=true) to replace it"
        )


def make_temp_dir(output_dir: Path) -> Path:
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.tmp-"))


def publish(temp_dir: Path, output_dir: Path) -> Path:
    """Move a complete temp folder to `output_dir`, replacing (overwrite was checked) an old one."""
    old = None
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        os.replace(output_dir, old)
    os.replace(temp_dir, output_dir)
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink()
    return output_dir
