"""Invariance training: penalties, criteria, gradient managers and linear-IRM metrics."""
