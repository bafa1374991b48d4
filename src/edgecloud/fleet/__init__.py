"""Signed model updates for a fleet of devices: deltas, update repository, agent, rollout.

Import-light on purpose: nothing here is imported until a submodule is, so the
edge path pays for none of it.
"""
