"""Client JSON carried in protobuf (google.protobuf.Value / Struct and messages) as plain
Python values, with a client's mistake reported as one.

protobuf's JSON printer refuses NaN and infinities in a Value ("Fail to serialize NaN for
Value.number_value") with a ValueError; a client can send them over native gRPC, so they
must become INVALID_ARGUMENT naming the field, never INTERNAL.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from runtime.errors import InvalidArgumentError


def message_json(field: str, message: Message, *, proto_names: bool = False) -> Any:
    """``message`` (a Value, Struct or any message) as JSON values; ``field`` names it in
    the error when it holds a number JSON cannot carry."""
    try:
        return json_format.MessageToDict(message, preserving_proto_field_name=proto_names)
    except ValueError as exc:
        raise InvalidArgumentError(f"{field}: numbers must be finite ({exc})") from exc
