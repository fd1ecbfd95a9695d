"""Evaluation: exact metrics, reports (json/markdown), published numbers, plots, thresholds.

Modules: `metrics`, `report`, `published`, `plots` (imports matplotlib), `threshold`.
"""
