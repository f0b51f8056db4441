"""Client of the text-to-image search service: `python -m client` and `client.api`."""
