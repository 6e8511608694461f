"""Piccolo's configuration, used by its CLI and by `python -m service migrate`.

The DSN comes from DATABASE_URL; `python -m service migrate` fills it in with the embedded
server's address when nothing is configured.
"""

import os

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

DB = PostgresEngine(config={"dsn": os.environ.get("DATABASE_URL", "postgresql://localhost/fal_jobs")})

APP_REGISTRY = AppRegistry(apps=["service.db.piccolo_app"])
