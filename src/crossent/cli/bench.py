"""`crossent bench`: run the repository's benchmark scripts (benchmarks/bench_*.py) on this machine.

The scripts own the measuring (interleaved timing, peak memory in subprocesses, provenance); this
command finds whichever exist, runs each in its own Python process, streams its table, and ends
with a summary of what ran and how long it took.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click

from ._errors import CliError

# run these first, in this order, when present; any other bench_*.py follows alphabetically
PREFERRED = ["bench_cross_entropy", "bench_linear_cross_entropy", "bench_shapes"]


def default_dir() -> Path:
    """./benchmarks if present, else the benchmarks/ of the source checkout crossent runs from."""
    here = Path.cwd() / "benchmarks"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3] / "benchmarks"


def discover(folder: Path) -> list[Path]:
    scripts = sorted(folder.glob("bench_*.py"))
    rank = {name: i for i, name in enumerate(PREFERRED)}
    return sorted(scripts, key=lambda p: (rank.get(p.stem, len(PREFERRED)), p.stem))


def command_for(script: Path, quick: bool) -> list[str]:
    """A package folder runs as `python -m benchmarks.bench_x` (relative imports), else as a path."""
    if (script.parent / "__init__.py").exists():
        cmd = [sys.executable, "-m", f"{script.parent.name}.{script.stem}"]
    else:
        cmd = [sys.executable, str(script)]
    if quick and "--quick" in script.read_text(encoding="utf-8", errors="replace"):
        cmd.append("--quick")
    return cmd


@click.command(short_help="Run the benchmark scripts (benchmarks/bench_*.py) here.")
@click.option(
    "--quick",
    is_flag=True,
    help="Small sizes and few rounds (passed to each script that accepts --quick).",
)
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of bench_*.py scripts (default: ./benchmarks, else the checkout's).",
)
@click.option(
    "--only",
    multiple=True,
    metavar="NAME",
    help="Run only this script, e.g. --only cross_entropy (repeatable).",
)
@click.option("--list", "list_only", is_flag=True, help="List the scripts found and exit.")
def bench(quick: bool, folder: Path | None, only: tuple[str, ...], list_only: bool) -> None:
    """Benchmark crossent's losses against torch on this machine, as tables.

    Runs every benchmarks/bench_*.py script that exists in the source checkout, each in a fresh
    Python process: bench_cross_entropy (the core loss), bench_linear_cross_entropy (the fused
    linear + cross-entropy) and bench_shapes (shapes from tiny to large), then any other, as
    they land. Each prints its own table (time, ratio to torch, peak memory); a summary follows.
    Needs a source checkout: the scripts are not part of the installed package.

    \b
    Examples:
      crossent bench --quick                  a fast pass over every script
      crossent bench --only cross_entropy     one script, full size
    """
    folder = folder or default_dir()
    if not folder.is_dir():
        raise CliError(
            f"there is no benchmark folder at '{folder}'; run from a crossent "
            "checkout or pass --dir"
        )
    scripts = discover(folder)
    if only:
        wanted = {o if o.startswith("bench_") else f"bench_{o}" for o in only}
        unknown = wanted - {s.stem for s in scripts}
        if unknown:
            raise CliError(
                f"no benchmark named {', '.join(sorted(unknown))} in '{folder}'; "
                f"choose from {', '.join(s.stem for s in scripts) or 'none'}"
            )
        scripts = [s for s in scripts if s.stem in wanted]
    if not scripts:
        raise CliError(
            f"'{folder}' holds no bench_*.py scripts; pass --dir with the benchmarks folder"
        )
    if list_only:
        for s in scripts:
            click.echo(s.stem)
        return

    _summarise([_run(script, quick, folder) for script in scripts])


def _run(script: Path, quick: bool, folder: Path) -> tuple[str, int, float]:
    """Run one script in its own process, streaming its output; (name, exit code, seconds)."""
    cmd = command_for(script, quick)
    click.echo(f"\n== {script.stem} ({' '.join(['python', *cmd[1:]])})")
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=folder.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    for line in proc.stdout or ():  # stream the script's table as it prints
        click.echo(line, nl=False)
    rc = proc.wait()
    return script.stem, rc, time.perf_counter() - start


def _summarise(summary: list[tuple[str, int, float]]) -> None:
    """The table of what ran; exit 1 when a script failed."""
    click.echo("\n| benchmark | result | seconds |\n|---|---|---|")
    for name, rc, seconds in summary:
        click.echo(f"| {name} | {'ok' if rc == 0 else f'failed (exit {rc})'} | {seconds:.1f} |")
    failed = [name for name, rc, _ in summary if rc != 0]
    if failed:
        click.echo(f"{len(failed)} benchmark(s) failed: {', '.join(failed)}", err=True)
        sys.exit(1)
