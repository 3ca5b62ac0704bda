"""Distillation terms: the losses, attention-score capture, layer maps, projections, and each objective's
loss composition (intermediate, prediction, MiniLMv2). A new loss goes here."""
