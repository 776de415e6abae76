"""Pipeline stages: each reads and writes only the run folder and is skipped once done."""
