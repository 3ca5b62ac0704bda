"""mkdocs hook: the configuration reference page is generated from the config dataclasses at build time."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from config_reference import reference


def on_page_markdown(markdown: str, page, **_kwargs) -> str:
    if page.file.src_uri == "configuration.md":
        return reference()
    return markdown
