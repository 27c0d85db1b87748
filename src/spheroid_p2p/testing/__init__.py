"""Tools for testing a node from outside: hostile peers for tests and benchmarks."""
