"""Search: sensitivity scores of every candidate variant, configurations built from them (paper rule and exact bit
budget), frontiers, insights and predictor-guided labelling (paper §3.4, §5-6)."""
