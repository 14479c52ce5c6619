"""Offline evaluation: leakage-free protocols, metrics with bootstrap intervals, the champion comparison,
the quality gate, off-policy estimates and the HTML report."""
