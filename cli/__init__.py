"""Helios command-line tools and developer helpers."""
