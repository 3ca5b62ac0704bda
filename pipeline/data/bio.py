"""IOB2 tag sequences: the entities they hold (shared by NER scoring and the MRC-style QA data built from NER)."""

from __future__ import annotations

from collections.abc import Sequence


def bio_entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entities of one IOB2-tagged sequence as (type, start, end) with `end` exclusive.

    Chunking follows conlleval (and seqeval's default, non-strict mode): an entity starts at `B-X`,
    and also at an `I-X` that follows `O` or a tag of another type; it ends before `O`, before any
    `B-`, and before an `I-` of another type. So ["O", "I-PER"] holds PER(1, 2) and
    ["B-PER", "I-LOC"] holds PER(0, 1) and LOC(1, 2).
    """
    entities = set()
    current: tuple[str, int] | None = None  # (type, start) of the entity being read
    for position, tag in enumerate(tags):
        prefix, kind = _split_tag(tag, position)
        continues = prefix == "I" and current is not None and current[0] == kind
        if current is not None and not continues:
            entities.add((current[0], current[1], position))
            current = None
        if prefix in ("B", "I") and not continues:
            current = (kind, position)
    if current is not None:
        entities.add((current[0], current[1], len(tags)))
    return entities


def _split_tag(tag: str, position: int) -> tuple[str, str | None]:
    if tag == "O":
        return "O", None
    prefix, dash, kind = tag.partition("-")
    if prefix not in ("B", "I") or not dash or not kind:
        raise ValueError(f"bio_entities: tag {tag!r} at position {position} is not O, B-<type> or I-<type>")
    return prefix, kind
