"""The hostile-peer suite: servers, publishers and local users that misbehave on purpose, each run
against a real ``conveyor run`` process (see tests/hostile/harness.py and docs/reliability.md)."""
