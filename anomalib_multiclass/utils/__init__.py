"""Utilities: offline pretrained weights."""
