"""TFDS builder package page_sequences (see builder.py)."""
