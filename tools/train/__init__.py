"""Turning datasets into model examples, and pretraining the base model."""
