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


def check_columns(dataset, wanted: dict[str, str | None], path: str) -> None:
    """Every configured column exists; the dataset is not empty."""
    for key, column in wanted.items():
        if column is not None and column not in dataset.column_names:
            raise DataError(
                f"columns.{key}: column {column!r} is not in {path} (columns: {', '.join(dataset.column_names)})"
            )
    if len(dataset) == 0:
        raise DataError(f"input.path: {path} has no examples")


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
