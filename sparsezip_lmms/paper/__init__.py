"""The field's benchmark table from lmms-eval runs: canonical metrics, retention, intervals, paired tests."""
