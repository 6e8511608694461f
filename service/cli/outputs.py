"""`outputs retry` and `outputs gc`: upkeep of the durable copies of outputs."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from service.cli.database import with_pool

if TYPE_CHECKING:
    import argparse

    import asyncpg

    from service.settings import Settings


def cmd_outputs_retry(settings: Settings, args: argparse.Namespace) -> int:
    from service.outputs.upkeep import REDRIVE_BATCH, redrive_failed

    async def work(pool: asyncpg.Pool) -> int:
        total, seen = 0, set()
        # Batch after batch until one is short; an output the running service failed again meanwhile
        # (seen already) ends the run rather than going round again.
        while batch := await redrive_failed(pool, fal_copy_lifetime_s=settings.fal_copy_lifetime_s,
                                            retryable_after_s=None, request_id=args.job, by="command"):
            fresh = [output for output in batch if (output.request_id, output.index) not in seen]
            for output in fresh:
                print(f"{output.request_id} {output.index} was: {output.error or '-'}")
                seen.add((output.request_id, output.index))
            total += len(fresh)
            if len(batch) < REDRIVE_BATCH or not fresh:
                break
        print(f"fal-jobs: {total} failed output(s) set pending again; the service's copy workers take them "
              "(only outputs whose fal copy lives, by FAL_MEDIA_EXPIRY_S or fal's 7 days)", file=sys.stderr)
        return 0

    return with_pool(settings, work)


def cmd_outputs_gc(settings: Settings, args: argparse.Namespace) -> int:
    from service.outputs.store import MediaStore
    from service.outputs.upkeep import orphans

    store = MediaStore.open(settings.media_store_url, settings.media_dir)

    async def work(pool: asyncpg.Pool) -> int:
        found = removed = size = 0
        async for obj in orphans(pool, store, older_than_s=args.older_than_h * 3600):
            found += 1
            size += obj.size
            if args.delete:
                await store.delete(obj.key)
                removed += 1
            print(f"{obj.key} {obj.size} {obj.last_modified.isoformat(timespec='seconds')}"
                  f"{' deleted' if args.delete else ''}")
        what = "deleted" if args.delete else "found (run again with --delete to remove them)"
        print(f"fal-jobs: {found} object(s) under outputs/ that no output names, {size} bytes, older than "
              f"{args.older_than_h:g} h in {store.description}: {what}", file=sys.stderr)
        if removed:
            from service import metrics

            metrics.output_orphan_removed("gc", removed)
        return 0

    try:
        return with_pool(settings, work)
    finally:
        store.close()
