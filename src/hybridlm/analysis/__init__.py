"""Measurements of a model: parameters, cost, mixing matrices, gradient flow, scaling fits."""
