"""Accuracy evaluation on LFW-format data: pair accuracy, TAR at FAR, thresholds, ROC plots."""
