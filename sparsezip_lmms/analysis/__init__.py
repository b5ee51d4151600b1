"""Analyses of logged runs: which visual patches each method kept, and how the runs' answers compare."""
