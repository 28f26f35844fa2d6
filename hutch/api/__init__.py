"""What the SDK and the engine share: wire types, URL templates, paths, error kinds, exit
codes."""
