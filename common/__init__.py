"""Code shared by the management server (msrv), the agent (agentd) and the admin CLI (msctl)."""
