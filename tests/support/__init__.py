"""Test support: real servers and fixtures' building blocks shared by the test suites."""
