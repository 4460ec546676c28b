"""Drills: the demo against the simulator, and the live drill on a real venue."""
