"""Measurements `ten` makes of itself: speed against attention (bench), training results (compare), recall
tasks (synthetic), loss by position (positions) and what a TEN learned (analyze)."""
