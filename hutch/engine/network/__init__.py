"""A sandbox's network: its namespace, outbound access through slirp4netns, and port tunnels."""
