"""Outputs for readers: figures (plots/) and the offline HTML report (report/)."""
