"""Explaining a corpus: ``batch`` (read records, explain in length-sorted runs, write resumable JSON
lines) and the same on Ray."""
