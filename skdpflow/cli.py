"""Command line: ``skdpflow fit | sample | report | evaluate | domain draft | demo``.

Errors a user can cause print one line, ``skdpflow: error: ...``, and exit with 2 (a
command-line argument that cannot be used: a hyperparameter out of range, an output path
refused) or 1 (the data, a domain or model file); ``--debug`` shows the traceback instead.
Ctrl-C prints ``skdpflow: interrupted`` and exits 130. Nothing is written before the work is
done, and then atomically, never over an input, never over a file without ``--force``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._io import OutputPathError, atomic_write, check_input_path, check_output_path
from ._validation import (
    InvalidDataError,
    Options,
    _AutoOr,
    parameter_summaries,
    validate_params,
)
from .domain import Domain, as_domain
from .streaming import (  # noqa: F401 - _read_data: tests read with it
    PARQUET_SUFFIXES,
    _check_header,
    _first_line,
    _parse_declared,
    _read_data,
    _read_text_csv,
    path_source,
)

__all__ = ["main"]

# A value that starts with an ISO date: `domain draft` reads such text columns as datetimes.
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]|$)")


# Exit statuses: a command-line argument that cannot be used; bad data or files; Ctrl-C.
EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(ValueError):
    """A command-line argument that cannot be used (exit status 2)."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("skdpflow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        print(f"skdpflow: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (UsageError, OutputPathError)) else EXIT_DATA


def _one_line(exc: Exception) -> str:
    """The package's message on one line; an unexpected error says what it is."""
    if isinstance(exc, InvalidDataError):
        return "The data cannot be used: " + "; ".join(exc.problems) + "."
    from .distributed import DistributedError

    if isinstance(exc, (ValueError, TypeError, OSError, DistributedError)):
        text = str(exc) or type(exc).__name__
    else:  # a bug, not a user error: name it, point at --debug
        text = f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skdpflow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: after the command, --debug must not reset the flag given before it
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    sub = p.add_subparsers(dest="command")

    fit = sub.add_parser("fit", help="fit a DP synthesizer on a CSV or Parquet file",
                         parents=[common])
    fit.add_argument("data", type=Path, help="CSV file (may be .gz), Parquet file, or folder of "
                     "Parquet files; read in chunks (bounded memory)")
    fit.add_argument("-o", "--output", type=Path, required=True,
                     help="model file to write (never the input; replaced only with --force)")
    fit.add_argument("--force", action="store_true", help="replace an existing output file")
    fit.add_argument("--domain", type=Path,
                     help="JSON or YAML file with the public domain: declared columns are read "
                          "by their declared type; undeclared columns are estimated under DP, "
                          "their kind inferred by pandas from the rows (declare them to keep "
                          "the schema public)")
    _add_hyperparameters(fit)
    fit.add_argument("--distributed", action="store_true",
                     help="fit on several processes started by torchrun (implied when "
                          "torchrun's WORLD_SIZE is above 1): each rank reads the rows i with "
                          "i %% WORLD_SIZE == RANK, "
                          "rank 0 writes the model (see docs/scale.md)")
    fit.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS",
                     help="distributed: how long a rank waits for the others at an exchange "
                          "before the fit fails (default: 1800)")
    fit.set_defaults(func=_fit)

    sample = sub.add_parser("sample", help="sample rows from a fitted model", parents=[common])
    sample.add_argument("model", type=Path)
    sample.add_argument("-n", "--num-rows", type=int, required=True)
    sample.add_argument("-o", "--output", type=Path, required=True,
                        help="file to write: Parquet for .parquet or .pq (needs pyarrow), "
                             "CSV otherwise (gzipped for .csv.gz); written chunk by chunk in "
                             "bounded memory; never the model; replaced only with --force")
    sample.add_argument("--force", action="store_true", help="replace an existing output file")
    sample.add_argument("--seed", type=int, default=None)
    sample.add_argument("--jobs", type=int, default=None, metavar="INT", help=JOBS_HELP)
    sample.add_argument("--chunk-size", type=int, default=65_536, metavar="INT",
                        help="rows written at a time (default: 65536); memory grows with it")
    sample.add_argument("--quiet", action="store_true",
                        help="no progress bar (shown on stderr when it is a terminal)")
    sample.set_defaults(func=_sample)

    report = sub.add_parser("report", help="print a fitted model's privacy report",
                            parents=[common])
    report.add_argument("model", type=Path)
    report.set_defaults(func=_report)

    evaluate = sub.add_parser(
        "evaluate", parents=[common],
        help="compare synthetic rows with the real ones: a table, and an HTML report with -o "
             "(NOT private: it compares real and synthetic rows)")
    evaluate.add_argument("real", type=Path, help="CSV file of the real rows")
    evaluate.add_argument("synthetic", type=Path, help="CSV file of the synthetic rows")
    evaluate.add_argument("--test", type=Path,
                          help="CSV file of real rows held out from the fit: the ceiling")
    evaluate.add_argument("--target", help="column to predict, train-synthetic-test-real "
                                           "(needs --test)")
    evaluate.add_argument("--domain", type=Path,
                          help="JSON or YAML domain file: column types (default: the model's "
                               "domain, else inferred by pandas)")
    evaluate.add_argument("--model", type=Path, help="fitted model: its privacy report joins "
                                                     "the HTML report")
    evaluate.add_argument("--rules", type=Path,
                          help="JSON or YAML file holding a list of rules (public facts "
                               "between columns, see skdpflow.constraints): the share of real "
                               "and synthetic rows keeping each")
    evaluate.add_argument("-o", "--output", type=Path,
                          help="self-contained HTML report to write (needs matplotlib; "
                               "replaced only with --force)")
    evaluate.add_argument("--force", action="store_true", help="replace an existing output file")
    evaluate.set_defaults(func=_evaluate)

    domain = sub.add_parser("domain", help="domain files: draft one from a CSV file",
                            parents=[common])
    domain_sub = domain.add_subparsers(dest="domain_command", required=True)
    draft = domain_sub.add_parser(
        "draft", parents=[common],
        help="write a domain file read from the data, to review and declare (NOT private)",
        description="Write a domain file read from the data (bounds rounded outward, "
                    "integer-ness, categories, nullability) for the data holder to review, "
                    "edit and declare. It is NOT differentially private: declaring it "
                    "asserts that every fact in it is public; the file says so in a header "
                    "comment.")
    draft.add_argument("data", type=Path, help="CSV file (may be .gz); kinds inferred by pandas")
    draft.add_argument("-o", "--output", type=Path, required=True,
                       help="domain file to write: YAML for .yaml/.yml, JSON otherwise (never "
                            "the input; replaced only with --force)")
    draft.add_argument("--force", action="store_true", help="replace an existing output file")
    draft.add_argument("--significant-digits", type=int, default=1, metavar="INT",
                       help="digits kept when numerical bounds are rounded outward "
                            "(default: 1; 0 keeps the exact extremes)")
    draft.set_defaults(func=_domain_draft)

    demo = sub.add_parser("demo", help="fit the bundled Adult table, sample, summarise",
                          parents=[common])
    _add_hyperparameters(demo)
    demo.add_argument("-n", "--num-rows", type=int, default=10_000)
    demo.set_defaults(func=_demo)
    return p


# Hyperparameters with a flag of their own; the CLI-only flags are written out below.
CLI_ONLY = {"random_state": "--seed", "verbose": "--quiet / --show-nonprivate-loss"}
# Hyperparameters whose flag is not their name with dashes, and defaults said in words.
FLAG_NAMES = {"n_jobs": "--jobs"}
DEFAULT_TEXT = {"n_jobs": "the usable cores minus the load of other processes, at least 1"}
JOBS_HELP = ("threads torch may use (-1: every usable core; default: the usable cores minus "
             "the load of other processes, at least 1)")


def _add_hyperparameters(p: argparse.ArgumentParser) -> None:
    """One flag per row of the estimator's constraint table, help from its numpydoc.

    Every flag defaults to None, which leaves the estimator's own default in place.
    """
    from .synthesizer import DPFlowSynthesizer

    defaults = DPFlowSynthesizer().get_params()
    summaries = parameter_summaries(DPFlowSynthesizer)
    for name, constraint in DPFlowSynthesizer._parameter_constraints.items():
        if name in CLI_ONLY:
            continue
        if isinstance(constraint, Options):
            kind = {"choices": sorted(constraint.values), "type": str}
        else:
            integral = constraint.kind is Integral
            number = int if integral else float
            metavar = "INT" if integral else "X"
            if isinstance(constraint, _AutoOr):
                number, metavar = _auto_or_number(number), f"{metavar}|auto"
            kind = {"type": number, "metavar": metavar}
        flag = FLAG_NAMES.get(name, f"--{name.replace('_', '-')}")
        default = DEFAULT_TEXT.get(name, defaults[name])
        p.add_argument(flag, dest=name, default=None, **kind,
                       help=f"{summaries[name]} (default: {default})".replace("%", "%%"))
    p.add_argument("--seed", type=int, default=None,
                   help="fixes model initialisation and sampling only, never the privacy "
                        "noise (default: none)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="no progress bar")
    output.add_argument("--show-nonprivate-loss", action="store_true",
                        help="show the training loss on the progress bar: a statistic of the "
                             "private rows without noise; not private")


def _auto_or_number(number: type):
    def parse(text: str) -> Any:
        return "auto" if text == "auto" else number(text)

    parse.__name__ = number.__name__  # argparse names the type in its error message
    return parse


def _synthesizer(args: argparse.Namespace):
    from .synthesizer import DPFlowSynthesizer

    verbose = "loss" if args.show_nonprivate_loss else not args.quiet
    params = {name: getattr(args, name) for name in DPFlowSynthesizer._parameter_constraints
              if name not in CLI_ONLY and getattr(args, name) is not None}
    synth = DPFlowSynthesizer(**params, random_state=args.seed, verbose=verbose)
    try:  # before any file is read: a value out of range is a usage error
        validate_params(type(synth).__name__, synth.get_params(),
                        synth._parameter_constraints)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return synth


def _fit(args: argparse.Namespace) -> int:
    synth = _synthesizer(args)
    if args.distributed or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return _fit_distributed(args, synth)
    inputs = [args.data] + ([args.domain] if args.domain is not None else [])
    check_output_path(args.output, inputs=inputs, overwrite=args.force, option="-o")
    domain = as_domain(args.domain) if args.domain is not None else Domain()
    if synth.privacy == "domain_from_data":  # the opt-out reads the whole table in memory
        data = _read_data(check_input_path(args.data, "data file"), domain)
    else:
        data = _data_source(args.data, domain)  # read in chunks
    synth.fit(data, domain=domain)
    synth.save(args.output)
    print(_format_report(synth.privacy_report()))
    print(f"model written to {args.output}")
    return 0


def _fit_distributed(args: argparse.Namespace, synth: Any) -> int:
    """``fit`` on every rank of a torchrun job: a disjoint share of the rows each, rank 0
    writes the model and prints (:func:`skdpflow.distributed.fit_sharded`)."""
    from .distributed import Communicator, fit_sharded, init_from_environment

    if not args.timeout > 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout}.")
    init_from_environment(args.timeout, synth.device)
    try:
        comm = Communicator()
        if comm.rank != 0:
            synth.set_params(verbose=False)

        def read() -> tuple[Domain, pd.DataFrame]:
            if comm.rank == 0:
                inputs = [args.data] + ([args.domain] if args.domain is not None else [])
                check_output_path(args.output, inputs=inputs, overwrite=args.force,
                                  option="-o")
            domain = as_domain(args.domain) if args.domain is not None else Domain()
            return domain, _data_source(args.data, domain, (comm.rank, comm.world_size),
                                        warn=comm.rank == 0)

        domain, shard = comm.agree(read, "reading the data")
        fit_sharded(synth, shard, domain=domain)
        comm.agree(lambda: synth.save(args.output) if comm.rank == 0 else None,
                   "writing the model")
        if comm.rank == 0:
            print(_format_report(synth.privacy_report()))
            print(f"model written to {args.output} (fitted on {comm.world_size} processes)")
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _data_source(path: Path, domain: Domain, shard: tuple[int, int] | None = None,
                 warn: bool = True) -> Any:
    """The data file (CSV, Parquet file or folder of Parquet files) as a source read in
    chunks; warns on stderr when a CSV file has undeclared columns (their kind is inferred
    from the rows)."""
    if not path.is_dir():
        check_input_path(path, "data file")
    source = path_source(path, domain, shard)
    if warn and not path.is_dir() and path.suffix.lower() not in PARQUET_SUFFIXES:
        header = pd.read_csv(path, nrows=0).columns
        undeclared = [c for c in header if c not in domain.columns]
        if undeclared:
            print(f"skdpflow: warning: undeclared column(s) {undeclared}: their kind (number "
                  "or category) is inferred from the rows; declare them in --domain to keep "
                  "the schema public", file=sys.stderr)
    return source


def _domain_draft(args: argparse.Namespace) -> int:
    if args.significant_digits < 0:
        raise UsageError(f"--significant-digits must be 0 (exact) or a positive number of "
                         f"digits, got {args.significant_digits}.")
    check_output_path(args.output, inputs=[args.data], overwrite=args.force, option="-o")
    check_input_path(args.data, "data file")
    _check_header(args.data)
    try:
        data = pd.read_csv(args.data)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{args.data} is not a readable CSV file ({_first_line(exc)}).") \
            from None
    drafted = Domain.draft(_iso_dates(data), significant_digits=args.significant_digits or None)
    drafted.save(args.output)
    print(f"draft domain of {len(drafted)} column(s) written to {args.output}. It is read "
          "from the data and NOT private: review and edit it (see its header) before "
          "declaring it with --domain. Public rules between columns (optional, enforced on "
          "every sample) go in a 'constraints' list beside the columns: see its header.")
    return 0


def _iso_dates(data: pd.DataFrame) -> pd.DataFrame:
    """Text columns whose every value starts with an ISO date (``YYYY-MM-DD``), as datetimes
    (pandas reads them as text); a value that does not parse leaves the column as text."""
    out = data.copy()
    for name in data.columns:
        values = data[name].dropna()
        if data[name].dtype != object or values.empty or not values.map(
                lambda v: isinstance(v, str) and ISO_DATE.match(v) is not None).all():
            continue
        parsed = pd.to_datetime(data[name], errors="coerce", format="ISO8601")
        if parsed.notna().sum() == len(values):
            out[name] = parsed
    return out


def _sample(args: argparse.Namespace) -> int:
    from .synthesizer import DPFlowSynthesizer

    if args.num_rows < 1:
        raise UsageError(f"-n/--num-rows must be a positive number of rows, got "
                         f"{args.num_rows}.")
    if args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be a positive number of rows, got "
                         f"{args.chunk_size}.")
    check_output_path(args.output, inputs=[args.model], overwrite=args.force, option="-o")
    file_format = _output_format(args.output)
    synth = DPFlowSynthesizer.load(args.model)
    if args.jobs is not None:
        synth.set_params(n_jobs=args.jobs)
        try:
            validate_params(type(synth).__name__, synth.get_params(),
                            synth._parameter_constraints)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--jobs: {exc}") from None
    synth.sample_to(args.output, args.num_rows, chunk_size=args.chunk_size,
                    random_state=args.seed, progress=not args.quiet and sys.stderr.isatty(),
                    file_format=file_format)
    print(f"{args.num_rows} rows written to {args.output}")
    return 0


def _output_format(path: Path) -> str:
    """Parquet for a Parquet suffix (pyarrow checked before any work), CSV otherwise."""
    from ._writers import require_pyarrow, table_format

    try:
        file_format = table_format(path)
    except ValueError:
        return "csv"
    if file_format == "parquet":
        from .report import MissingDependencyError

        try:
            require_pyarrow()
        except MissingDependencyError as exc:
            raise UsageError(f"-o {path}: {exc}") from None
    return file_format


def _report(args: argparse.Namespace) -> int:
    from .synthesizer import DPFlowSynthesizer

    print(_format_report(DPFlowSynthesizer.load(args.model).privacy_report()))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    if args.target is not None and args.test is None:
        raise UsageError("--target needs --test: the real rows to score the models on.")
    inputs = [p for p in (args.real, args.synthetic, args.test, args.domain, args.model,
                          args.rules) if p]
    if args.output is not None:
        check_output_path(args.output, inputs=inputs, overwrite=args.force, option="-o")
        from .report import MissingDependencyError, require_matplotlib

        try:  # before any work: the report could not be drawn
            require_matplotlib()
        except MissingDependencyError as exc:
            raise UsageError(f"-o {args.output}: {exc}.") from None
    rules = None
    if args.rules is not None:  # before any row is read: a bad file stops here
        from .constraints import load_rules

        rules = load_rules(args.rules)
    model = None
    if args.model is not None:
        from .synthesizer import DPFlowSynthesizer

        model = DPFlowSynthesizer.load(args.model)
    domain = as_domain(args.domain) if args.domain is not None else (
        model.domain_ if model is not None else Domain())
    tables = [_read_table(p, domain) if p is not None else None
              for p in (args.real, args.synthetic, args.test)]
    result = evaluate(*tables[:2], test=tables[2], target=args.target, domain=domain,
                      model=model, rules=rules)
    print(result.summary())
    if args.output is not None:
        text = result.to_html()
        atomic_write(args.output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        print(f"report written to {args.output} (not private: share it only with those "
              "allowed to see the real data)")
    return 0


def _read_table(path: Path, domain: Domain) -> pd.DataFrame:
    """A CSV file to compare: declared columns by their domain type, the rest inferred by
    pandas (no warning: nothing is fitted on them)."""
    check_input_path(path, "data file")
    _check_header(path)
    try:
        inferred = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable CSV file ({_first_line(exc)}).") from None
    declared = [c for c in inferred.columns if c in domain.columns]
    if declared:
        parsed = _parse_declared(_read_text_csv(path), domain, declared, f"{path}: ")
        for name, values in parsed.items():
            inferred[name] = values
    return inferred


def _demo(args: argparse.Namespace) -> int:
    from .datasets import CITATION, load_demo, load_demo_domain

    data = load_demo()
    print(f"Demo table: UCI Adult, {len(data)} rows x {data.shape[1]} columns. {CITATION}")
    synth = _synthesizer(args)
    start = time.perf_counter()
    synth.fit(data, domain=load_demo_domain())
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    fake = synth.sample(args.num_rows)
    sample_s = time.perf_counter() - start
    print(f"\nfit {fit_s:.1f} s; sampled {len(fake)} rows in {sample_s:.2f} s")
    print("\nFirst synthetic rows:")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(fake.head(5).to_string(index=False))
    print("\nUtility (synthetic vs real):")
    print(_utility_summary(data, fake))
    print("\nPrivacy:")
    print(_format_report(synth.privacy_report()))
    return 0


def _utility_summary(real: pd.DataFrame, fake: pd.DataFrame) -> str:
    from .metrics import marginal_tvd, mean_tvd

    tvd = {k[0]: v for k, v in marginal_tvd(real, fake).items()}
    lines = [f"  mean total variation distance: 1-way {np.mean(list(tvd.values())):.3f}, "
             f"2-way {mean_tvd(real, fake, order=2):.3f} (0 = identical, 1 = disjoint)"]
    worst = sorted(tvd.items(), key=lambda kv: -kv[1])[:3]
    lines.append("  worst columns: " + ", ".join(f"{k} {v:.3f}" for k, v in worst))
    return "\n".join(lines)


def _format_report(report: dict) -> str:
    lines = []
    if not report["private"]:
        lines.append("  NOT PRIVATE: epsilon = inf (no clipping, no noise, exact marginals)")
    else:
        lines.append(f"  ({report['epsilon_spent']:.4f}, {report['delta_spent']:.3g})-DP for one "
                     "row, "
                     f"accountant {report['accountant']} (target epsilon "
                     f"{report['target_epsilon']:g})")
        for m in report["mechanisms"]:
            lines.append(f"  - {m['name']}: noise multiplier {m['noise_multiplier']:.3f}, "
                         f"epsilon alone {m['epsilon_alone']:.4f}")
    derived = report["domain"]["read_from_data_not_private"]
    estimated = report["domain"]["estimated_with_dp"]
    if derived:
        lines.append(f"  WARNING: domain of {len(derived)} column(s) read from the data, not "
                     f"covered by the guarantee: {derived}")
    if estimated:
        lines.append(f"  domain estimated under DP for {len(estimated)} column(s): {estimated}")
    if not derived and not estimated:
        lines.append("  domain: declared public for every column")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

