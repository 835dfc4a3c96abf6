"""Split-learning fields ↔ Flower records (the only place that knows Flower's record types).

Fields are str/int/float/bool/bytes or lists of them, so they travel as one ``ConfigRecord``:
bytes go in as bytes (no pickle, no base64), exactly the codec payloads we measure.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, RecordDict

#: Key of the ConfigRecord holding the fields, in messages and in ``context.state``.
RECORD = "fl_split.sl"


def to_record(fields: dict[str, Any]) -> RecordDict:
    """Wrap fields in a ``RecordDict`` (one ``ConfigRecord``; empty lists are left out)."""
    clean = {k: v for k, v in fields.items() if not (isinstance(v, list) and not v)}
    return RecordDict({RECORD: ConfigRecord(clean)})


def from_record(content: RecordDict) -> dict[str, Any]:
    """The fields of a message or state written by :func:`to_record` (``{}`` when absent)."""
    if RECORD not in content:
        return {}
    record = content[RECORD]
    return {k: (list(v) if isinstance(v, list) else v) for k, v in record.items()}
