"""The example clinic's Django project."""
