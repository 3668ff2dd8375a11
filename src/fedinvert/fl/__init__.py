"""Federated-learning clients (FedSGD, FedAvg local training), its attacker-side simulation, and aggregation."""

from fedinvert.fl.aggregation import split_clients, sum_updates
from fedinvert.fl.fedavg import (
    GUESSED_LOCAL_TRAINING,
    FedAvgClient,
    local_batches,
    local_steps,
    model_loss,
    simulate_local_training,
)
from fedinvert.fl.fedsgd import FedSGDClient, GradientFunction, parameter_gradients

__all__ = [
    "GUESSED_LOCAL_TRAINING",
    "FedAvgClient",
    "FedSGDClient",
    "GradientFunction",
    "local_batches",
    "local_steps",
    "model_loss",
    "parameter_gradients",
    "simulate_local_training",
    "split_clients",
    "sum_updates",
]
