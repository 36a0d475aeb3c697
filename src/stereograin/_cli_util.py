"""Pieces every ``stereograin`` subcommand shares: one-line errors, lengths with units, timed steps."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from .errors import StereograinError

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(func: F) -> F:
    """Turn expected errors into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StereograinError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except MemoryError:
            typer.echo("error: out of memory; process a smaller volume or fewer shells at once", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; finished files are kept", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _length_nm(text: str) -> float:
    from .units import parse_length

    return parse_length(text)


class _steps:
    """Print a step's name and its duration (for single long calls without a loop to count)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        import time

        self.t = time.perf_counter()
        typer.echo(f"{self.name} ...", err=True)

    def __exit__(self, *exc: Any) -> None:
        import time

        if exc[0] is None:
            typer.echo(f"{self.name}: {time.perf_counter() - self.t:.1f} s", err=True)
