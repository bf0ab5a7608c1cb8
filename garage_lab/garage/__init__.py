"""The simulated Garage: one daemon process per node, and a CLI that reaches it over RPC.

Standard library only: every lab "binary" is a launcher that runs this package in one
personality (see :mod:`garage_lab.garage.personality`).
"""
