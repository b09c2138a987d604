"""Evaluation metrics for generated videos."""
