"""The local migration work: pipeline, rsync runner, target session, progress."""
