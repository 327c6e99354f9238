"""ami-server-cluster: Redis Streams event bus, cluster-wide single login and session list."""
