"""Ranges every id, count and seed must fall in (flags are checked against them before any
write): ids and counts are stored as 64-bit integers, seeds feed numpy's and torch's generators."""

INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1
