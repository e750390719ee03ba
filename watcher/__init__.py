"""serving-watcher: predicts failures of model-serving replicas and remediates them early."""

__version__ = "0.1.0"
