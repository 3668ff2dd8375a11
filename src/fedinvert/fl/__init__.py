"""Federated-learning clients (FedSGD, FedAvg) and aggregation."""

from fedinvert.fl.fedsgd import FedSGDClient, parameter_gradients

__all__ = ["FedSGDClient", "parameter_gradients"]
