"""Datasets: readers for on-disk formats, records, and the built-in synthetic city."""
