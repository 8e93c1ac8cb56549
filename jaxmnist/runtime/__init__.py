"""The resumable driver around the core and what it needs: checkpoints, the workdir, stopping,
devices and processes, and the run's console lines."""
