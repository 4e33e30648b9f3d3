"""Evaluation: bits per byte, and (later) multiple choice, generative tasks, judges, scaling laws."""
