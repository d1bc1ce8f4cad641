"""The ``dotproxy`` command line."""
