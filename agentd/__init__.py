"""agentd: the agent daemon, and a swarm mode that runs many agents in one process."""
