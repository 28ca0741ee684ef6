"""Bundled tasks: each subfolder is a task (a folder with an `rsilab.toml`)."""
