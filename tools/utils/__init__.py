"""Library code behind the command lines in tools/: importable by tests."""
