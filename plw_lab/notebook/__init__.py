"""What the teaching notebooks use, in one namespace: `from plw_lab.notebook import ...`.

The services (train, sweep, load_run, ...) come from `plw_lab` itself; this module adds the
ipywidgets helpers, the views the app shows too, and, for notebook 01, the mechanics it opens up
(encoding, collating, the weight rule and the loss). Importing it loads ipywidgets and plotly.
"""

from plw_lab.core.advice import collapse
from plw_lab.core.builtin import BUILTIN_SETS
from plw_lab.core.collate import collate
from plw_lab.core.config import DataConfig, LabConfig
from plw_lab.core.data import load_examples, make_split
from plw_lab.core.evaluation import adapter, evaluate_answers, token_losses
from plw_lab.core.extras import MissingExtraError
from plw_lab.core.loss import token_weights
from plw_lab.core.masks import Encoded, encode, encode_all, render
from plw_lab.core.mixing import balanced_counts
from plw_lab.core.models import load_model, load_tokenizer
from plw_lab.core.probe import frozen_feature_probe
from plw_lab.core.runs import load_run as read_run
from plw_lab.core.stats import label_counts, length_stats
from plw_lab.core.stopping import stopping_report
from plw_lab.core.sweep import points
from plw_lab.core.sweep_table import read_csv
from plw_lab.core.training import prepare
from plw_lab.core.weights import token_weight_values
from plw_lab.notebook.widgets import LiveCurves, answer_summary, batch_frame, shown_curves, token_view
from plw_lab.views.charts import (
    answer_distribution_figure,
    label_balance_figure,
    overlay_figure,
    plw_sweep_figure,
    remedies_figure,
    rg_histogram,
    sweep_figure,
)
from plw_lab.views.lesson_charts import arm_curves_figure, verdict_figure
from plw_lab.views.stopping_view import stopping_rows, stopping_sentences
from plw_lab.views.text_views import (
    generations_html,
    measured_markdown,
    metrics_comparison_rows,
    probe_rows,
    relative_change,
    remedy_verdicts,
    run_point,
    run_report,
    runs_rows,
    stats_markdown,
    sweep_row_text,
    verdict_html,
)
from plw_lab.views.tokens_view import completion_weight_share, token_loss_html

__all__ = [
    "BUILTIN_SETS",
    "MissingExtraError",
    "DataConfig",
    "Encoded",
    "LabConfig",
    "LiveCurves",
    "adapter",
    "answer_distribution_figure",
    "arm_curves_figure",
    "answer_summary",
    "balanced_counts",
    "batch_frame",
    "collapse",
    "collate",
    "completion_weight_share",
    "encode",
    "encode_all",
    "evaluate_answers",
    "frozen_feature_probe",
    "generations_html",
    "label_balance_figure",
    "label_counts",
    "length_stats",
    "load_examples",
    "load_model",
    "load_tokenizer",
    "make_split",
    "measured_markdown",
    "metrics_comparison_rows",
    "overlay_figure",
    "plw_sweep_figure",
    "points",
    "prepare",
    "probe_rows",
    "read_csv",
    "read_run",
    "relative_change",
    "remedies_figure",
    "remedy_verdicts",
    "render",
    "rg_histogram",
    "run_point",
    "run_report",
    "runs_rows",
    "shown_curves",
    "stats_markdown",
    "stopping_report",
    "stopping_rows",
    "stopping_sentences",
    "sweep_figure",
    "sweep_row_text",
    "token_loss_html",
    "token_losses",
    "token_view",
    "token_weight_values",
    "token_weights",
    "verdict_figure",
    "verdict_html",
]
