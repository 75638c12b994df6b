"""Pruning methods behind one interface (registry below, filled in by the redesign)."""
