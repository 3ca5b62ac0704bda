"""Output directories and checkpoints: atomic, resumable, never mistaken for finished work.

Layout of a stage's output directory:
    tinydistill_run.json        written last; its presence means "this run finished"
    resolved_config.yaml        the config that made it
    train_log.jsonl             one JSON object per logged step
    checkpoints/step_000100/    accelerate state (model, optimizer, scheduler, RNG) + train_state.json
A checkpoint is written under a hidden temp name and renamed when complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.config import atomic_write_text
from pipeline.errors import ConfigError

FINISHED_MARKER = "tinydistill_run.json"
CHECKPOINTS = "checkpoints"


def prepare_output_dir(output_dir: str | Path, overwrite: bool, resume_from: str | None) -> Path:
    """Create `output_dir`, or refuse to clobber a finished or unfinished run unless asked."""
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output_dir: {output} exists and is not a directory")
    finished = (output / FINISHED_MARKER).is_file()
    has_checkpoints = bool(list_checkpoints(output))
    if overwrite and output.exists() and any(output.iterdir()):
        if not finished and not has_checkpoints and not (output / "resolved_config.yaml").exists():
            raise ConfigError(f"output_dir: {output} is not empty and was not made by tinydistill; refusing to delete it")
        shutil.rmtree(output)
    elif finished and resume_from is None:
        raise ConfigError(
            f"output_dir: {output} holds a finished run; pass --overwrite (overwrite: true) or pick another output_dir"
        )
    elif has_checkpoints and resume_from is None:
        raise ConfigError(
            f"output_dir: {output} holds an unfinished run with checkpoints; pass --resume to continue it "
            "or --overwrite to start again"
        )
    output.mkdir(parents=True, exist_ok=True)
    return output


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp directories of interrupted saves are ignored)."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def resolve_resume(output_dir: str | Path, resume_from: str | None) -> Path | None:
    """The checkpoint to resume from: `auto` means the newest one in output_dir (None if there is none)."""
    if resume_from is None:
        return None
    if resume_from == "auto":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from)
    if not (path / "train_state.json").is_file():
        raise ConfigError(f"train.resume_from: {resume_from} is not a tinydistill checkpoint (no train_state.json)")
    return path


def checkpoint_paths(output_dir: str | Path, step: int) -> tuple[Path, Path]:
    """(temp dir to write into, final name) for the checkpoint at `step`."""
    root = Path(output_dir) / CHECKPOINTS
    return root / f".step_{step:06d}.tmp", root / f"step_{step:06d}"


def finalize_checkpoint(tmp: Path, final: Path, keep: int) -> None:
    """Rename a fully written checkpoint into place and delete the oldest beyond `keep`."""
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(final.parent.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False))


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def mark_finished(output_dir: str | Path, summary: dict) -> None:
    """Write the marker that says the run is complete. Call it after every other output is written."""
    write_json(Path(output_dir) / FINISHED_MARKER, {"finished": True, **summary})
