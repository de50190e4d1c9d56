"""Where DALs run: Docker containers (``docker``) or local processes (``process``)."""
