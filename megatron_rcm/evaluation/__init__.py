"""Metrics of generated Moving Digits videos: prompt accuracy, Frechet distance, diversity."""

from .digits import load_classifier, video_metrics

__all__ = ["load_classifier", "video_metrics"]
