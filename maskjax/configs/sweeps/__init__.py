"""Sweep definitions (`get_sweep(arg)`), addressed as sweeps/<name> or by path."""
