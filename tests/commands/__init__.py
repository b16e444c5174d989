"""Tests of rmbench_fast/commands/: the CLI's contract.

- test_cli: bad input: exit code 2, one line, no traceback
- test_input_edges: four input edges a new user hit (issue 22)
"""
