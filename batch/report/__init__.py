"""What a run leaves for people: the row files, summary.json, the console digest, report.html.

Modules, one job each:

- `files`: results.csv, failures.csv, changes.csv, requests.jsonl writers, `write_json_atomic`
  (what `batch.report` always held; its names are re-exported here, so imports keep working);
- `tally`: the counts per field, error code and retry reason that summary.json carries;
- `commands`: the exact commands to resume and to revert a run;
- `problems`: the first failed, invalid and conflict rows, read back from results.csv;
- `console`: the lines printed after a run (problem rows, per-field totals);
- `timeline`: writes per second over a run's parts, from what the ledger recorded;
- `svg`: the few chart shapes report.html draws (no plotting library);
- `html`: report.html, one self-contained page per run folder; `job_html`: job.html.
"""

from batch.report.files import (
    CHANGE_COLUMNS,
    KEY_PROPERTIES,
    NULL_TEXT,
    RESULT_COLUMNS,
    ChangesWriter,
    FailuresWriter,
    RequestsWriter,
    ResultsWriter,
    cell_text,
    key_columns,
    neutralise,
    neutralise_cell,
    write_json_atomic,
)

__all__ = [
    "CHANGE_COLUMNS",
    "KEY_PROPERTIES",
    "NULL_TEXT",
    "RESULT_COLUMNS",
    "ChangesWriter",
    "FailuresWriter",
    "RequestsWriter",
    "ResultsWriter",
    "cell_text",
    "key_columns",
    "neutralise",
    "neutralise_cell",
    "write_json_atomic",
]
