"""Fleet updates: a TUF update repository, tensor-level deltas, the device agent, rollout."""
