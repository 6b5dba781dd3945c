"""Audit a journal from its events alone: replay, verify, export and an execution-quality report.

Every function opens the journal read-only without the lock and reads one snapshot,
so it is safe while another process writes. See docs/audit.md.
"""

from .fold import ReplayRefused
from .integrity import VerifyResult, verify
from .page import report_html
from .quality import ExecutionReport, OrderQuality, report
from .tables import EVENT_COLUMNS, LEDGER_COLUMNS, ExportFormat, export, export_ledger
from .timeline import OrderTimeline, TimelineEntry, replay

__all__ = [
    "EVENT_COLUMNS",
    "LEDGER_COLUMNS",
    "ExecutionReport",
    "ExportFormat",
    "OrderQuality",
    "OrderTimeline",
    "ReplayRefused",
    "TimelineEntry",
    "VerifyResult",
    "export",
    "export_ledger",
    "replay",
    "report",
    "report_html",
    "verify",
]
