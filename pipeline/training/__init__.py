"""The training runtime every stage shares: Accelerate set-up, the one training loop, checkpoints, the
non-finite and stop-signal guards, the teacher-logits cache, CPU memory."""
