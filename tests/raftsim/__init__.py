"""The Raft simulator (`sim.py`: seeded whole-cluster runs) and the hand-driven cluster of
pure cores (`manual.py`), shared by tests/sim and the Raft unit tests. A library, not tests:
test modules import from here, never from each other."""
