"""Federated learning with compressed updates: config, the update codec path, local training, mods."""
