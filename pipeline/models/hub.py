"""Hub ids with a pinned revision: `org/name@revision` (a branch, a tag or a commit), for models and datasets.

Downloads go to the standard Hugging Face caches (`HF_HOME`, `HF_HUB_CACHE`, `HF_DATASETS_CACHE`), which
tinydistill never redirects, so they are shared with every other tool and kept between runs.
"""

from __future__ import annotations

from pathlib import Path


def split_revision(source: str) -> tuple[str, str | None]:
    """(hub id or path, revision or None). Only something that looks like a hub id ("name" or
    "org/name") and is not an existing local path carries a revision."""
    if "@" not in source or Path(source).expanduser().exists():
        return source, None
    name, revision = source.rsplit("@", 1)
    if not name or not revision or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return source, None
    return name, revision
