"""Measurements `ten` makes of itself: speed against attention (bench) and training results (compare)."""
