"""Thin Linux helpers with no engine policy: calls ``os`` lacks, process trees, ACLs,
id ranges, removing trees."""
