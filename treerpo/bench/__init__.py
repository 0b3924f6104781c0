"""Benchmarks behind `treerpo bench ...`: each returns a result object; the CLI prints it."""
