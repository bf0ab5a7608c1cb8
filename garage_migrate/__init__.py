"""garage-migrate: migrate a Garage cluster from v0.7.3 to v0.8.x over SSH, one safe step at a time."""
