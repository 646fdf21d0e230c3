"""`tamperlab run|list|report|demo|serve` — one entry point for every system."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Any, NoReturn

from .errors import TamperlabError

DEMOS = {
    "ctrap": "demo_ctrap",
    "extraction": "demo_extraction",
    "fingerprints": "demo_fingerprints",
    "eaas": "demo_eaas",
}

SMOKE_HELP = ("check the recipe's code path in seconds on CPU: tiny random model of the same family, hub data from "
              "schema fixtures, 2 steps per stage; writes <name>-smoke (numbers meaningless)")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)])
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _execute(exp: Any, smoke: bool, **kw: Any) -> Any:
    """Run an experiment; with `smoke`, its smoke copy (tiny model, fixture data, 2 steps) as `<name>-smoke`."""
    from .experiments.base import execute

    if not smoke:
        return execute(exp, **kw)
    from . import smoke as smoke_mode

    exp.cfg = smoke_mode.apply(exp.cfg)
    with smoke_mode.active():
        return execute(exp, **kw)


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments.base import load_recipe

    exp = load_recipe(args.recipe, args.set)
    if args.name is not None:
        exp.cfg.name = args.name  # validated with the output location by execute(), before anything is written
    if args.output_dir is not None:
        exp.cfg.output_dir = args.output_dir
    run = _execute(exp, args.smoke, resume=args.resume, force=args.force)
    print(f"done: {run.path}  (report: {run.path / 'report.md'})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .experiments.base import RECIPES_DIR
    from .registry import ALL_REGISTRIES

    if args.stage and args.stage not in ALL_REGISTRIES:
        raise TamperlabError(f"unknown stage {args.stage!r}; choose one of {', '.join(ALL_REGISTRIES)}")
    table = Table(title="registered components")
    table.add_column("stage")
    table.add_column("name")
    table.add_column("what it is")
    for stage, reg in ALL_REGISTRIES.items():
        if args.stage and stage != args.stage:
            continue
        for e in reg:
            table.add_row(stage, e.name, e.doc)
        for old, new in reg.aliases().items():
            table.add_row(stage, old, f"deprecated name of {new}")
    con = Console()
    con.print(table)
    con.print("packaged recipes: " + ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments.base import experiment_for_run, write_report

    exp, run = experiment_for_run(args.run_dir)
    try:
        paths = write_report(exp, run)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        # metrics.json parsed (experiment_for_run checks that) but lacks what this experiment's report reads.
        raise TamperlabError(f"{run.path}: metrics.json does not hold this experiment's results "
                             f"({type(e).__name__}: {e}); was the run finished with this version?") from None
    for p in paths:
        print(p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.base import load_recipe

    recipe = DEMOS.get(args.system)
    if recipe is None:
        raise TamperlabError(f"unknown demo {args.system!r}; choose one of {', '.join(DEMOS)}")
    exp = load_recipe(recipe, args.set)
    if args.output_dir is not None:
        exp.cfg.output_dir = args.output_dir
    run = _execute(exp, args.smoke, resume=not args.fresh, force=args.fresh)
    print(f"demo done: {run.path / 'report.md'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .eaas.server import serve_recipe  # the EaaS subsystem

    return serve_recipe(args.recipe, host=args.host, port=args.port, overrides=args.set, workers=args.workers)


def _int_in(lo: int, hi: int | None = None) -> Any:
    """argparse `type=` for an integer option in [lo, hi]: a bad value is a usage error (one line, exit 2) before
    anything loads."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {value}" if hi is not None
                                             else f"must be >= {lo}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays available with --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


SET_HELP = ("override a recipe field (value parsed as YAML; integers index lists), e.g. --set seed=1, "
            "--set alignment.max_steps=120 or --set attacks.0.train.max_steps=20 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tamperlab", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a recipe (YAML path or packaged recipe name)")
    r.add_argument("recipe")
    r.add_argument("--resume", action="store_true", help="continue a killed run from its cached stages/checkpoints (hft, ctrap_table, study: the recipe may "
                   "also have grown or changed; only new and changed stages compute)")
    r.add_argument("--force", action="store_true", help="delete an existing run directory and start over")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    r.add_argument("--name", help="run name (default: the recipe's)")
    r.add_argument("--output-dir", help="parent folder of run directories (default: the recipe's)")
    r.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    r.set_defaults(fn=cmd_run)

    ls = sub.add_parser("list", help="list registered components and packaged recipes")
    ls.add_argument("stage", nargs="?", help="only this stage (defenses, attacks, judges, ...)")
    ls.set_defaults(fn=cmd_list)

    rep = sub.add_parser("report", help="(re)write report.md/report.html for a run directory")
    rep.add_argument("run_dir")
    rep.set_defaults(fn=cmd_report)

    d = sub.add_parser("demo", help="run a system's offline demo on the embedded models")
    d.add_argument("system", nargs="?", default="ctrap", help=f"one of {', '.join(DEMOS)} (default ctrap)")
    d.add_argument("--fresh", action="store_true", help="start over instead of resuming an earlier demo run")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    d.add_argument("--output-dir")
    d.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    d.set_defaults(fn=cmd_demo)

    s = sub.add_parser("serve", help="start the embedding-as-a-service provider of a recipe")
    s.add_argument("recipe")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_int_in(1, 65535), default=8000)
    s.add_argument("--workers", type=_int_in(1), default=None,
                   help="server processes behind the port (default: the recipe's server.workers, 1)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(fn=cmd_serve)
    return p


def os_error_message(e: OSError) -> str:
    """One line for a file-system failure, with what to do about the common ones."""
    name = f" {e.filename}" if e.filename else ""
    what = e.strerror or str(e) or type(e).__name__
    hint = {
        errno.ENOSPC: "free some space or point --output-dir / TAMPERLAB_CACHE elsewhere",
        errno.EDQUOT: "free some space or point --output-dir / TAMPERLAB_CACHE elsewhere",
        errno.EACCES: "check the permissions, or choose another --output-dir / TAMPERLAB_CACHE",
        errno.EPERM: "check the permissions, or choose another --output-dir / TAMPERLAB_CACHE",
        errno.EROFS: "the file system is read-only: choose another --output-dir / TAMPERLAB_CACHE",
        errno.ENOTDIR: "a path component is a file, not a directory",
        errno.EEXIST: "a file is in the way of a directory",
        errno.EISDIR: "a directory is where a file was expected",
    }.get(e.errno or -1)
    cache = os.environ.get("TAMPERLAB_CACHE")
    if cache and e.filename and str(e.filename).startswith(cache):
        hint = f"the cache TAMPERLAB_CACHE={cache} is not usable" + (f"; {hint}" if hint else "")
    return f"{what}:{name}" + (f" ({hint})" if hint else "")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    _setup_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.fn(args) or 0)
    except TamperlabError as e:
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        print("tamperlab: interrupted; continue with --resume", file=sys.stderr)
        return 130
    # Class-level safety net: bad input that reached library code still ends in one line, exit 2 (-v: traceback).
    except OSError as e:
        return _fail(os_error_message(e), 2, args.verbose)
    except UnicodeError as e:
        return _fail(f"a file or value is not valid text ({e})", 2, args.verbose)
    except RecursionError:
        return _fail("input nested too deeply (recursion limit)", 2, args.verbose)
    except MemoryError:
        return _fail("out of memory (is a size in the recipe far too large?)", 2, args.verbose)


def _fail(message: str, code: int, verbose: bool = False) -> int:
    if verbose:
        import traceback

        traceback.print_exc()
    print("tamperlab: error: " + " ".join(message.split()), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
