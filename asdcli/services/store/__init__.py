"""Run folders: their files, typed records, stage commits and locks, older formats."""
