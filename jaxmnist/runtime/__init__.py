"""The resumable driver around the core and what it needs: the data on disk, checkpoints, the
workdir and its lock, stopping, devices and processes, metrics and the console."""
