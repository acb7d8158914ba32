"""msctl: the administrator's command line for settings, hosts, servers and a local lab."""
