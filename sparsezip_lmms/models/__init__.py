"""lmms-eval model classes (imported lazily by lmms-eval through the entry points)."""
