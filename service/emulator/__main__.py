"""Run the emulator on its own: python -m service.emulator --host 127.0.0.1 --port 8100 --key KEY"""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from service.logging import configure_logging

from . import FalEmulator, create_emulator_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service.emulator", description="Local fal.ai queue emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--key", action="append", help="accepted FAL key (repeatable); default: $FAL_KEY")
    parser.add_argument("--base-url", help="public base URL, if not http://HOST:PORT")
    parser.add_argument("--queue-ms", type=int, default=50, help="default time in queue")
    parser.add_argument("--run-ms", type=int, default=100, help="default running time")
    parser.add_argument("--heartbeat-s", type=float, default=15.0)
    parser.add_argument("--webhook-timeout-s", type=float, default=15.0)
    parser.add_argument("--pace", choices=("fast", "demo"), default="fast",
                        help="demo: fal-like seconds in queue and running for requests without fal_emulator options")
    args = parser.parse_args()

    keys = args.key or ([os.environ["FAL_KEY"]] if os.environ.get("FAL_KEY") else [])
    if not keys:
        parser.error("give --key or set FAL_KEY")
    emulator = FalEmulator(
        args.base_url or f"http://{args.host}:{args.port}",
        keys,
        default_queue_ms=args.queue_ms,
        default_run_ms=args.run_ms,
        heartbeat_s=args.heartbeat_s,
        webhook_timeout_s=args.webhook_timeout_s,
        pace=args.pace,
    )
    # The service's one log stream (JSON, or text on a terminal), uvicorn's lines included.
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    log_format = os.environ.get("LOG_FORMAT", "").lower()
    configure_logging(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO",
                      log_format if log_format in ("json", "text") else None)  # type: ignore[arg-type]
    logging.getLogger("service.emulator").info(
        "fal emulator listening", extra={"url": emulator.base_url, "jwks": emulator.jwks_url})
    uvicorn.run(create_emulator_app(emulator), host=args.host, port=args.port, log_config=None,
                timeout_graceful_shutdown=2, workers=1)  # its state is in memory: one process, whatever WEB_CONCURRENCY says


if __name__ == "__main__":
    main()
