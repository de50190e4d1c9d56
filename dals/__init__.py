"""Sample data access layers (DALs) used by the demo and the tests."""
