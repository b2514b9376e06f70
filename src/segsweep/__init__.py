"""segsweep: sweeps of loss recipes and real/synthetic data mixes for semantic segmentation."""
