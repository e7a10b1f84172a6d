"""TFDS builder package video_mcqa (see builder.py)."""
