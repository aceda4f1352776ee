"""Experiments built on the engine: the paper's comparison (methods x tasks x seeds) and its report.

sweep.py   `semionline sweep`: many short runs in one process with one vLLM engine, resumable
report.py  tables (mean +- std over seeds), claims checked against the seeds' spread, PNG plots
"""
