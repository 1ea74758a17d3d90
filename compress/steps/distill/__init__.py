"""Knowledge distillation: train a smaller student to match the incoming model (the teacher)."""
