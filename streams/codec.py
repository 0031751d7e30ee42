"""Faust's ``orjson`` codec: the worker's tables and topics serialise with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from faust.serializers import codecs

from streams.domain.records import dumps


class OrjsonCodec(codecs.Codec):
    """Faust codec ``orjson``: records as compact JSON objects, fast."""

    def _dumps(self, obj: Any) -> bytes:
        return dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


codecs.register("orjson", OrjsonCodec())
