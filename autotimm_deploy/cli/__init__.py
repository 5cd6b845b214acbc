"""Command-line tools; each is a thin layer over the Python API."""
