"""The `walkbook` group: every command registered in one place, usage errors on one line."""

from __future__ import annotations

from typing import Any

import click

from .audit import journal_group, report_command
from .exits import EXIT_CODES_HELP, usage_errors_on_one_line
from .follow import follow_command
from .preview import preview_command
from .run import demo_command, resume_command, run_command
from .simserver import sim_server
from .standby import standby_command
from .status import status_command
from .stop import abandon_command, halt_command
from .watch import watch_command

__all__ = ["main"]


class WalkbookGroup(click.Group):
    """The `walkbook` group: its own and its commands' usage errors fit the exit-code
    contract (exit 2, one line on stderr)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with usage_errors_on_one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with usage_errors_on_one_line():
            return super().invoke(ctx)


@click.group(cls=WalkbookGroup, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="walkbook")
def main() -> None:
    """walkbook: crash-safe walk-the-book order execution with a SQLite or PostgreSQL journal."""


for command in (
    run_command,
    preview_command,
    resume_command,
    standby_command,
    demo_command,
    status_command,
    watch_command,
    journal_group,
    report_command,
    sim_server,
    halt_command,
    abandon_command,
):
    main.add_command(command)
journal_group.add_command(follow_command)
