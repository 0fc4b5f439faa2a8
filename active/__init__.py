"""The active-learning loop: import, scoring, selection, disputes, retraining, export, CLI."""
