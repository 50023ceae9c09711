"""CLI commands for carrying entries by hand: bundles, backups, second devices (issue 7)."""


def add_commands(sub, add_home) -> None:
    """Register the carry commands on the `crewnode` parser."""
