"""TFDS builder package m4_vitevqa (see builder.py)."""
