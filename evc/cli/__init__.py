"""The ``evc`` command line."""
