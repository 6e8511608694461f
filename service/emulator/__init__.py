"""A local stand-in for fal.ai's queue API and signed webhooks (tests, local runs, demos)."""

from .app import create_emulator_app
from .engine import FalEmulator
from .faults import FAULTS_KEY, FaultOptions, FaultOptionsError
from .records import AppRef, EmulatedRequest, QueueError, SubmitRecord
from .signing import KeySet, SigningKey
from .webhooks import FAL_RETRY_SCHEDULE_S
from .wire import DeliveryAttempt, LogEntry, StatusResponse, SubmitResponse, WebhookBody

__all__ = [
    "FAL_RETRY_SCHEDULE_S",
    "FAULTS_KEY",
    "AppRef",
    "DeliveryAttempt",
    "EmulatedRequest",
    "FalEmulator",
    "FaultOptions",
    "FaultOptionsError",
    "KeySet",
    "LogEntry",
    "QueueError",
    "SigningKey",
    "StatusResponse",
    "SubmitRecord",
    "SubmitResponse",
    "WebhookBody",
    "create_emulator_app",
]
