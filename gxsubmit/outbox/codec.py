"""The claim's fast path from wire rows to :class:`ClaimedCommand` objects."""

from __future__ import annotations

from dataclasses import fields, make_dataclass
from typing import Any, cast

from gxsubmit.outbox.records import ClaimedCommand
from gxsubmit.rowdecode import decode_payloads, json_loads

#: ClaimedCommand's exact slot layout, but not frozen: the claim fills one of these per row (plain slot
#: stores) and then relabels it as a ClaimedCommand, which Python allows between classes of identical
#: slots. A frozen dataclass's __init__ sets each of its 15 fields through object.__setattr__: 1.6 us a
#: row here against 0.4 this way, more than reading the row off the wire costs.
_ClaimedBuilder = make_dataclass(
    "_ClaimedBuilder", [(f.name, f.type) for f in fields(ClaimedCommand)], slots=True
)


def _claimed(row: tuple[Any, ...], payload: Any) -> ClaimedCommand:
    """The claim's row (in field order, payload still JSON text) as a ClaimedCommand."""
    obj = _ClaimedBuilder(*row)
    obj.payload = payload
    obj.__class__ = ClaimedCommand
    return cast(ClaimedCommand, obj)


#: the claim's decoders live in gxsubmit.rowdecode (one row that cannot be decoded fails alone)
_json_loads = json_loads
_decode_payloads = decode_payloads
