"""Images as the engine sees them: resolving references, building from steps."""
