"""Output directories and checkpoints: atomic, resumable, never mistaken for finished work.

Layout of a stage's output directory:
    tinydistill_run.json        written last; its presence means "this run finished"
    resolved_config.yaml        the config that made it
    train_log.jsonl             one JSON object per logged step
    checkpoints/step_000100/    accelerate state (model, optimizer, scheduler, RNG) + train_state.json +
                                run_signature.json + manifest.json (every file's size and sha256, written last)
A checkpoint is written under a hidden temp name, its manifest last, and renamed when complete. Resuming
verifies the manifest: a damaged newest checkpoint (a node died mid-copy, a disk filled) is passed over, with
a warning, for the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pipeline.config import atomic_write_text
from pipeline.errors import ConfigError

FINISHED_MARKER = "tinydistill_run.json"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"


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


def resolve_resume(output_dir: str | Path, resume_from: str | None) -> tuple[Path | None, list[str]]:
    """(the checkpoint to resume from, one warning per damaged checkpoint passed over).

    `auto` means the newest intact checkpoint in output_dir (None if there is none at all); a path must be an
    intact checkpoint. No intact checkpoint is a one-line `ConfigError`."""
    if resume_from is None:
        return None, []
    if resume_from == "auto":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            return None, []
        warnings = []
        for checkpoint in reversed(checkpoints):
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                return checkpoint, [f"{w}; resuming from {checkpoint.name}" for w in warnings]
            warnings.append(f"checkpoint {checkpoint} is damaged ({problem})")
        raise ConfigError(f"train.resume_from: no intact checkpoint in {Path(output_dir) / CHECKPOINTS}: "
                          f"{'; '.join(w.removeprefix('checkpoint ') for w in warnings)}")
    path = Path(resume_from)
    if not (path / "train_state.json").is_file():
        raise ConfigError(f"train.resume_from: {resume_from} is not a tinydistill checkpoint (no train_state.json)")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ConfigError(f"train.resume_from: checkpoint {resume_from} is damaged ({problem})")
    return path, []


def write_manifest(checkpoint: Path) -> None:
    """List every file of a written checkpoint with its size and sha256, in manifest.json, written last."""
    files = {str(p.relative_to(checkpoint)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(checkpoint.rglob("*")) if p.is_file() and p.name != MANIFEST}
    write_json(checkpoint / MANIFEST, {"files": files})


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint against its manifest (None: intact). A checkpoint written before
    manifests existed has none and is taken as it is."""
    manifest_path = checkpoint / MANIFEST
    if not manifest_path.is_file():
        return None if (checkpoint / "train_state.json").is_file() else "no train_state.json"
    try:
        files = read_json(manifest_path)["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size:,} bytes, the manifest says {expected['bytes']:,}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
