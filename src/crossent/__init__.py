"""crossent: exact, fast, memory-lean cross-entropy for PyTorch."""
