"""MLflow tracking: store resolution, run logging, the pyfunc model flavor, and lineage.

Importing this package imports MLflow (~1.5 s); entry points should import it lazily.
"""

from textclf.tracking.lineage import LineageFacts, collect_lineage, lineage_tags
from textclf.tracking.report import LineageLink, LineageReport, lineage_report
from textclf.tracking.run import LoggedRun, log_training_run
from textclf.tracking.store import client, configure_mlflow, tracking_uri

__all__ = [
    "LineageFacts",
    "LineageLink",
    "LineageReport",
    "LoggedRun",
    "client",
    "collect_lineage",
    "configure_mlflow",
    "lineage_report",
    "lineage_tags",
    "log_training_run",
    "tracking_uri",
]
