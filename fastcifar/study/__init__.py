"""Reproduce the study's tables and figure with seeds, on one machine or a Ray cluster.

- :mod:`~fastcifar.study.rows`: the rows and experiments (defined once) and the recipe -> flags map;
- :mod:`~fastcifar.study.jobs`: one run's folder, state and one attempt (a ``fastcifar.train`` subprocess);
- :mod:`~fastcifar.study.executors`: the local and Ray executors;
- :mod:`~fastcifar.study.runner`: planning, continuing and scheduling the runs;
- :mod:`~fastcifar.study.report`, :mod:`~fastcifar.study.stats`: the report and its t-test.

``python -m fastcifar.study list | run | report``; see docs/study.md.
"""

from fastcifar.study.rows import CLAIMS, EXPERIMENTS, ROWS, Row, select_rows, train_args
from fastcifar.study.runner import run

__all__ = ["CLAIMS", "EXPERIMENTS", "ROWS", "Row", "run", "select_rows", "train_args"]
