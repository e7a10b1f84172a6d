"""TFDS builder package synthetic_textvideo (see builder.py)."""
