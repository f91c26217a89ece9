"""Training stages: teacher curation, SFT, OSIPO, encoder distillation, LTV models."""
