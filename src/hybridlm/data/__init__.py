"""Tokenizers, text datasets and synthetic tasks."""
