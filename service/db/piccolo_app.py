"""Piccolo's app config: where the tables and the migrations of `fal_jobs` live."""

from piccolo.conf.apps import AppConfig

from service.db.tables import (
    FalApiKey,
    FalBrowserSession,
    FalEarlyWebhook,
    FalJob,
    FalJobEvent,
    FalSignInToken,
    FalUser,
)
from service.settings import PROJECT_ROOT

APP_CONFIG = AppConfig(
    app_name="fal_jobs",
    migrations_folder_path=str(PROJECT_ROOT / "piccolo_migrations"),
    table_classes=[FalUser, FalApiKey, FalJob, FalJobEvent, FalEarlyWebhook, FalSignInToken, FalBrowserSession],
    migration_dependencies=[],
    commands=[],
)
