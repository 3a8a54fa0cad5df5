"""Analyses that consume attributions: head importance and pruning, trees, triggers; and the dataset runner."""
