"""Fireworks platform endpoints (a self-hosted subset of the Gateway REST API) over ember.store."""
