"""The sans-I/O signal core of iwm-alerts.

Feed it bars, read back indicator values, sub-scores, the composite score and
(later) alerts. Nothing in this package touches a socket, a clock, a file or a
logger: time and data are passed in, results are returned.
"""
