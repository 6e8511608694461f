"""Where the running service is, for the CLI of another shell: `run` and `serve` record their
address while they serve, and `users sign-in` prints its link there.

A shell's settings are not the server's (`PORT=8001 python3 -m service run` in one, `users sign-in`
in the next), so the CLI asks what the server of its own database recorded. The record is keyed by
that database (the embedded one's folder, or DATABASE_URL), since a sign-in token is good only on
a server of the database that holds it; a record whose process is gone is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from service.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator

    from service.settings import Settings

RECORDS = PROJECT_ROOT / ".run"


def _record(settings: Settings) -> Path:
    database = settings.database_url or "embedded:" + str(Path(settings.embedded_pgdata).resolve())
    return RECORDS / f"{hashlib.sha256(database.encode()).hexdigest()[:16]}.json"


@contextlib.contextmanager
def recorded_address(settings: Settings, url: str) -> Iterator[None]:
    """Record `url` as the address of the service on `settings`' database while the block runs.
    A record that cannot be written only costs the CLI its guess, so it never stops the service."""
    path = _record(settings)
    with contextlib.suppress(OSError):
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({"url": url, "pid": os.getpid()}))
        partial.replace(path)
    try:
        yield
    finally:
        if _read(path).get("pid") == os.getpid():  # not a later server's record
            path.unlink(missing_ok=True)


def running_address(settings: Settings) -> str | None:
    """The address a live `run` or `serve` of this database recorded, if one is running."""
    record = _read(_record(settings))
    pid, url = record.get("pid"), record.get("url")
    if not isinstance(pid, int) or not isinstance(url, str):
        return None
    try:
        os.kill(pid, 0)  # signal 0: is it alive? (a PermissionError says it is, under another user)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return url


def _read(path: Path) -> dict[str, object]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
