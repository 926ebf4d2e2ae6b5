"""Reliability: kills, full disks, damaged files, concurrent jobs, truncated and long media."""
