"""Token ids of consecutive lines -> fixed-size sequences with [CLS] ... [SEP]; one rule for the
streaming reader and `prepare-corpus`, so both cut a corpus into the same sequences."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

PACKING_MODES = ("documents", "across_documents", "lines")


def pack(lines: Iterable[list[int] | None], max_seq_len: int, cls_id: int, sep_id: int,
         mode: str = "documents") -> Iterator[list[int]]:
    """`lines` are token ids per line, None for a document break.

    documents         consecutive lines of a document fill each sequence; a break flushes it
    across_documents  documents run on, joined by [SEP], so every sequence but the last is full
    lines             one truncated sequence per line
    A line longer than a sequence continues in the next one (except in `lines` mode).
    """
    body = max_seq_len - 2
    pending: list[int] = []
    for ids in lines:
        if ids is None:
            if mode == "across_documents":
                if pending and pending[-1] != sep_id:
                    pending.append(sep_id)
            elif pending:
                yield [cls_id, *pending, sep_id]
                pending = []
            continue
        if not ids:
            continue
        if mode == "lines":
            yield [cls_id, *ids[:body], sep_id]
            continue
        pending.extend(ids)
        while len(pending) >= body:
            yield [cls_id, *pending[:body], sep_id]
            pending = pending[body:]
    if pending and pending != [sep_id]:
        yield [cls_id, *pending, sep_id]
