"""Accuracy evaluation on LFW-format data: pair accuracy, TAR at FAR, thresholds, ROC plots.

Owns metrics and calibration; imports inference and gallery; never api, app or cli (the commands call it).
"""
