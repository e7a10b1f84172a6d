"""TFDS builder package videor4_trajectories (see builder.py)."""
