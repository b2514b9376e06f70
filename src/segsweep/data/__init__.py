"""Datasets (Cityscapes and GTA5 layouts, the embedded ToyCity generator), transforms and real/synthetic mixing."""
