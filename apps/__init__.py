"""The application layer: programs that use the lab and the orchestrator together (the demo).

Dependencies point one way: ``apps`` imports ``flows``, ``garage_migrate`` and ``garage_lab``;
none of them imports ``apps``, and the lab imports nothing of the orchestrator.
"""
