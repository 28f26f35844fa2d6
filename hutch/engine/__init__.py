"""The daemon: one sub-system per folder, in layers (docs/design.md, "Where things are")."""
