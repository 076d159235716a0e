"""Trainers for the learned parts: the compressor (``lychee train compressor``)."""
