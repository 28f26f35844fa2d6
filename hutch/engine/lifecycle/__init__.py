"""A sandbox from create to its end: the manager, launch, supervision, pools, recovery."""
