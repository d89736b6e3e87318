"""Helpers of the fault tests: processes to kill and restart, conditions to wait on."""
