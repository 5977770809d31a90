"""JSON without `import json`: the plugin's config in, its result out.

`import json` costs about 8 ms of start-up (it pulls in `re`); its C accelerator `_json`
alone does the same work for the plugin's documents. tests/cni/test_allocator.py checks the
codec against the json module.
"""

from __future__ import annotations

from _json import encode_basestring_ascii, make_encoder, make_scanner

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~9 ms at start-up: only type checkers import it
    from typing import Any

WHITESPACE = " \t\r\n"


class _ScannerContext:
    """The attributes `_json.make_scanner` reads from a json.JSONDecoder, with its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


def json_loads(text: str) -> Any:
    start = len(text) - len(text.lstrip(WHITESPACE))
    try:
        value, end = make_scanner(_ScannerContext())(text, start)  # type: ignore[arg-type]
    except (StopIteration, SystemError):
        # Bad input only. The accelerator can only describe the error once json.decoder is
        # imported (else SystemError), so let the json module produce the message.
        import json

        return json.loads(text)
    if text[end:].strip(WHITESPACE):
        raise ValueError(f"extra data at offset {end}")
    return value


def _reject(obj: object) -> None:
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_dumps(value: Any) -> str:
    """ASCII JSON, as `json.dumps(value)` prints it, except that NaN is refused."""
    # Arguments: markers (circular check), default, string encoder, indent, key separator,
    # item separator, sort_keys, skipkeys, allow_nan.
    encode = make_encoder(
        {}, _reject, encode_basestring_ascii, None, ": ", ", ", False, False, False
    )
    return "".join(encode(value, 0))
