"""Helpers shared by the tests, the benches and scripts (never imported by service/ or pipeline/)."""
