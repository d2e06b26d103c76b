"""Foundations every layer uses: errors, atomic files and hashes, the cache location, the journal."""
