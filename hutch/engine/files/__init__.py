"""Reading and writing a sandbox's (or volume's) files from the engine without leaving its root."""
