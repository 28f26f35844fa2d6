"""What the engine keeps on disk: the state database, root file systems, disk slots,
volumes, and the records of what runs."""
