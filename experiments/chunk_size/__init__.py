"""Chunk size: large chunks make the fast-weight op hardware-efficient (the paper's central point)."""
