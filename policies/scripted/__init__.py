"""Scripted privileged-state experts that make demonstrations, one module per env family.

Experts read object poses from the simulator object they are given (never import ``vlamergebench.envs``:
the arrows of the README's package layout). ``libero.py``: LIBERO tasks; other families add their own module.
"""
