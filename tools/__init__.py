"""Offline helpers: the demo teacher builder and the sample-data generator (importable as tools.*)."""
