"""Evaluation: metrics, model selection, ensembling, model files, report."""
