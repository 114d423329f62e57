"""The example clinic's patients app."""
