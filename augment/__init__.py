"""Augmentation: turn a task dataset into a transfer set for task-specific distillation."""
