"""Signed model updates for a fleet of devices: update repository, deltas, agent, rollout."""
