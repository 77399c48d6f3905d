"""Builders and fakes shared by more than one test directory (imported as ``support.*``:
pyproject's pytest ``pythonpath`` puts tests/ on the path for this package). A helper
that one directory uses stays beside its tests."""
