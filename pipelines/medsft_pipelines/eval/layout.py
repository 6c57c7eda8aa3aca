"""Where an eval job puts things under its output URI (pure names: the operator imports this
module to find the summary and the results; it imports nothing heavy).

::

    <outputUri>/results.json       every score (written before the summary)
    <outputUri>/report.md          the report
    <outputUri>/plots/*.png        accuracy and response-length plots
    <outputUri>/summary.json       written LAST: what the operator folds into the status
"""

from __future__ import annotations

RESULTS_KEY = "results.json"
REPORT_KEY = "report.md"
SUMMARY_KEY = "summary.json"
ACCURACY_PLOT_KEY = "plots/accuracy.png"
LENGTH_PLOT_KEY = "plots/response_length.png"
