"""Prefect flows: the two migration procedures and the rollback."""
