"""The allowed models' input schemas, read from fal (through the gateway) and kept in memory.

A schema is kept `ttl_s` (FAL_SCHEMA_TTL_S), then read again. When fal's schema cannot be had
(fal unreachable, an error answer, a document without an input), the last known schema stands; a
model whose schema was never had is not checked: its jobs go to fal as before (fal checks them
there) and each such job is logged (`action=model_schema.unchecked`). A failed read is not
repeated for RETRY_AFTER_S, so a fal outage does not add its time-out to every submit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from service.errors import DomainError, Unprocessable
from service.fal.input_schema import InputField, ModelSchema, fields, input_schema, problems

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30.0


class _Entry:
    def __init__(self) -> None:
        self.schema: ModelSchema | None = None
        self.next_read = 0.0
        self.lock = asyncio.Lock()


class ModelSchemas:
    def __init__(self, read: Callable[[str], Awaitable[Any]], *, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    async def get(self, model_id: str) -> ModelSchema | None:
        """The model's input schema: fresh, else the last known, else None."""
        entry = self._entries.setdefault(model_id, _Entry())
        if self._clock() < entry.next_read:
            return entry.schema
        async with entry.lock:  # one read per model at a time; the others wait for it
            if self._clock() >= entry.next_read:
                await self._refresh(model_id, entry)
        return entry.schema

    async def _refresh(self, model_id: str, entry: _Entry) -> None:
        try:
            entry.schema = input_schema(await self._read(model_id), model_id)
            entry.next_read = self._clock() + self._ttl_s
        except (DomainError, ValueError) as exc:
            entry.next_read = self._clock() + min(RETRY_AFTER_S, self._ttl_s)
            log.warning("fal's schema for %s could not be read; %s", model_id,
                        "the last known one stands" if entry.schema else "its inputs go unchecked",
                        extra={"action": "model_schema.unavailable", "model_id": model_id, "error": str(exc),
                               "last_known": entry.schema is not None})

    async def check(self, model_id: str, model_input: dict[str, Any]) -> None:
        """Unprocessable naming each field the model would refuse; nothing when its schema is unknown."""
        schema = await self.get(model_id)
        if schema is None:
            log.warning("a job for %s goes to fal unchecked: its schema was never had", model_id,
                        extra={"action": "model_schema.unchecked", "model_id": model_id})
            return
        found = problems(schema, model_input)
        if found:
            raise Unprocessable("; ".join(found))

    async def fields(self, model_id: str) -> list[InputField] | None:
        """The model's input fields; None when its schema was never had."""
        schema = await self.get(model_id)
        return fields(schema) if schema else None
