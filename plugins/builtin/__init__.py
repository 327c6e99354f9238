"""ami-server's builtin plugins: each module is a plugin using the public hooks."""
