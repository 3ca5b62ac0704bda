"""Machinery the stages share: config schema, CLI, Accelerate runtime, data, losses, checkpoints."""
