"""ringcache's cluster client: ketama placement, failures as fast misses, parallel multi-key."""
