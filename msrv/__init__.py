"""The management server: agent sessions, host registry, per-agent lists, live propagation."""
