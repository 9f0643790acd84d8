"""Training-side energy experiments of the Green AI study (HPO strategies, layer ablation)."""
