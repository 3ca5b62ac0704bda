"""`tinydistill merge-shards SHARD... OUT`: join the shards of an `augment --shard i/n` array job.

Shards are contiguous row ranges and each example's RNG depends only on (seed, source row), so the
merged transfer set (rows, `stats.json` counts) equals the one a single unsharded run writes. The merge
checks that the shards are exactly 0..n-1 of the same n, built from the same config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from augment.config import parse_shard
from augment.io import make_temp_dir, publish, refuse_finished
from augment.stats import merge_counts, summarise
from pipeline.config import atomic_write_text
from pipeline.errors import DataError

_PER_SHARD_KEYS = ("shard", "output_dir", "overwrite")


def _read_shard(directory: Path) -> tuple[dict, dict]:
    try:
        stats = json.loads((directory / "stats.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((directory / "resolved_config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        raise DataError(f"{directory}: not a finished augmentation shard (no readable stats.json)") from None
    if not stats.get("shard"):
        raise DataError(f"{directory}: was not built with --shard i/n")
    return stats, config


def merge_shards(shard_dirs: list[str | Path], output_dir: str | Path) -> Path:
    """Concatenate shards 0..n-1 (any order given) into one transfer set under `output_dir`."""
    output_dir = Path(output_dir)
    refuse_finished(output_dir, overwrite=False)
    shards = []
    for directory in map(Path, shard_dirs):
        stats, config = _read_shard(directory)
        shards.append((parse_shard(stats["shard"]), directory, stats, config))
    shards.sort(key=lambda s: s[0])
    counts = {n for (_, n), *_ in shards}
    indices = [i for (i, _), *_ in shards]
    if len(counts) != 1 or indices != list(range(next(iter(counts)))):
        found = ", ".join(s[2]["shard"] for s in shards)
        raise DataError(f"merge-shards: need shards 0..n-1 of one n exactly once, got {found}")
    common = [{k: v for k, v in s[3].items() if k not in _PER_SHARD_KEYS} for s in shards]
    if any(c != common[0] for c in common[1:]):
        raise DataError("merge-shards: the shards were built with different configs")
    formats = common[0].get("output", {}).get("formats", ["arrow", "jsonl"])

    temp_dir = make_temp_dir(output_dir)
    try:
        if "arrow" in formats:
            import datasets

            parts = [datasets.load_from_disk(str(d / "dataset")) for _, d, _, _ in shards]
            datasets.concatenate_datasets(parts).save_to_disk(str(temp_dir / "dataset"))
        if "jsonl" in formats:
            with (temp_dir / "transfer.jsonl").open("wb") as out:
                for _, directory, _, _ in shards:
                    with (directory / "transfer.jsonl").open("rb") as part:
                        shutil.copyfileobj(part, out)
        first, last = shards[0][2], shards[-1][2]
        facts = {
            "language": first["language"],
            "shard": None,
            "input_rows": [first["input_rows"][0], last["input_rows"][1]],
            "sources": first["sources"],
        }
        merged = merge_counts(s[2]["counts"] for s in shards)
        atomic_write_text(
            temp_dir / "stats.json", json.dumps(summarise(merged, facts), ensure_ascii=False, indent=2)
        )
        config = {**shards[0][3], "output_dir": str(output_dir), "shard": None, "overwrite": False}
        atomic_write_text(
            temp_dir / "resolved_config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        )
        return publish(temp_dir, output_dir)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
