"""The pure Raft core: no I/O, no clock, no threads; driven by `RaftCore.step(messages)`."""
