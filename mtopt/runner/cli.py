"""``mtopt-bench``: train registry methods on benchmark tasks and write a comparison report."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

import mtopt
from mtopt.pareto._preferences import check_driver_preferences
from mtopt.runner.report import TaskResults, markdown_table, slug, write_report
from mtopt.runner.train import effective_options, single_task_baseline, train

__all__ = ["main", "parse_spec"]

_DEFAULTS = {
    "tasks": ["multidigits"],
    "methods": ["equal", "uncertainty", "famo", "mgda", "pcgrad", "cagrad", "nash_mtl", "upgrad"],
    "seeds": [0, 1, 2],
    "steps": 1000,
    "batch_size": 64,
    "lr": 1e-3,
    "eval_every": 100,
}
# --quick: the README's main job; well under 5 minutes on a 2-core CPU.
_QUICK = {
    "tasks": ["multidigits"],
    "methods": ["equal", "famo", "mgda", "cagrad"],
    "seeds": [0, 1],
    "steps": 300,
    "batch_size": 64,
    "lr": 1e-3,
    "eval_every": 50,
}
_CACHE_FILE = "single_task_cache.json"


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets and quotes: ``a=[1,2],b='x,y'`` -> two parts."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Parse ``name`` or ``name:key=value,key=value`` into ``(name, options)``.

    Values are Python literals (``ast.literal_eval``: numbers, lists, tuples, True,
    None, quoted strings); anything else is kept as a string.

    Example:
      >>> from mtopt.runner.cli import parse_spec
      >>> parse_spec("cagrad:c=0.4,rescale=1")
      ('cagrad', {'c': 0.4, 'rescale': 1})
      >>> parse_spec("linear:weights=[1, 0.2]")
      ('linear', {'weights': [1, 0.2]})
      >>> parse_spec("mgda:normalization=l2")
      ('mgda', {'normalization': 'l2'})
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"{spec!r}: empty name.")
    options: dict[str, Any] = {}
    for part in _split_top_level(rest):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ValueError(f"{spec!r}: expected key=value options, got {part!r}.")
        try:
            options[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key] = value.strip()
    return name, options


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Train mtopt methods on benchmark tasks (every seed of a method in one compiled\n"
            "program), compare them with single-task learning (Δm, lower is better) and write\n"
            "results.md, results.json and plots under --out."
        ),
        epilog=(
            "Examples:\n"
            f"  {prog} --quick\n"
            f"  {prog} --tasks multidigits gradnorm:num_tasks=10 --methods mgda cagrad:c=0.4 "
            "--seeds 0 1 2 --steps 500 --out results\n"
            f"  {prog} --methods all --steps 200\n"
            "Options are name:key=value,key=value with Python-literal values; preference\n"
            "methods also take preference=[...] (default uniform 1/T; checked before any\n"
            "training: finite, non-negative, summing to 1; an error for other methods)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help=f"tasks, with options as name:key=value (default: {_DEFAULTS['tasks']})")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="registry methods with options, e.g. cagrad:c=0.4,rescale=1, or 'all' "
                        f"(default: {' '.join(_DEFAULTS['methods'])})")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                   help=f"seeds, vmapped in one program (default: {_DEFAULTS['seeds']})")
    p.add_argument("--steps", type=int, help=f"training steps (default {_DEFAULTS['steps']})")
    p.add_argument("--batch-size", type=int,
                   help=f"mini-batch size (default {_DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {_DEFAULTS['lr']})")
    p.add_argument("--eval-every", type=int,
                   help=f"steps between evaluations (default {_DEFAULTS['eval_every']})")
    p.add_argument("--out", default="mtopt-bench-results", help="output directory")
    p.add_argument("--checkpoint-dir", help="save checkpoints after every evaluation here")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoints in --checkpoint-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    p.add_argument("--list-tasks", action="store_true", help="list the tasks and exit")
    p.add_argument("--quick", action="store_true",
                   help="preset for a run of a few minutes on a laptop CPU: "
                        + ", ".join(f"{k}={v}" for k, v in _QUICK.items())
                        + " (explicit flags override it)")
    return p


def _list_methods() -> str:
    lines = [f"{'name':18} {'needs':9} {'flags':24} options"]
    for name in mtopt.method_names():
        info = mtopt.method_info(name)
        flags = [f for f, on in (("stateful", info.stateful), ("random", info.stochastic),
                                 ("preference", info.preference)) if on]
        opts = ", ".join(
            f"{k}" if v is inspect.Parameter.empty else f"{k}={v!r}"
            for k, v in info.options().items()
        )
        lines.append(f"{name:18} {info.needs.value:9} {','.join(flags) or '-':24} {opts}")
    return "\n".join(lines)


def _tasks_module() -> Any:
    import mtopt.tasks

    return mtopt.tasks


def _load_cache(path: Path) -> dict[str, Any]:
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def main(argv: Optional[Sequence[str]] = None, prog: str = "mtopt-bench") -> int:
    """Run the benchmark command line; returns 0 on success (errors exit with status 2).

    A missing optional dependency (scikit-learn for the data sets, tqdm, matplotlib)
    is reported in one line naming the extra to install, not as a traceback.

    Args:
      argv: the arguments (default ``sys.argv[1:]``).
      prog: the program name shown in help and written into the reports.
    """
    try:
        return _main(argv, prog)
    except ImportError as err:
        message = str(err)
        if "pip install" not in message:
            message += ' (an optional dependency: pip install "mtopt[examples]")'
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


def _main(argv: Optional[Sequence[str]], prog: str) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.list_methods:
        print(_list_methods())
        return 0
    tasks_lib = _tasks_module()
    if args.list_tasks:
        print("\n".join(tasks_lib.task_names()))
        return 0

    preset = _QUICK if args.quick else _DEFAULTS
    cfg = {
        "tasks": args.tasks or preset["tasks"],
        "methods": args.methods or preset["methods"],
        "seeds": args.seeds if args.seeds is not None else preset["seeds"],
        "steps": args.steps if args.steps is not None else preset["steps"],
        "batch_size": args.batch_size if args.batch_size is not None else preset["batch_size"],
        "lr": args.lr if args.lr is not None else preset["lr"],
        "eval_every": args.eval_every if args.eval_every is not None else preset["eval_every"],
    }
    for key in ("steps", "batch_size", "eval_every"):
        if cfg[key] < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1, got {cfg[key]}.")
    if not math.isfinite(cfg["lr"]) or cfg["lr"] <= 0:
        parser.error(f"--lr must be positive, got {cfg['lr']}.")
    if len(set(cfg["seeds"])) != len(cfg["seeds"]):
        parser.error(f"--seeds must be distinct, got {cfg['seeds']}.")
    if args.resume and not args.checkpoint_dir:
        parser.error("--resume needs --checkpoint-dir.")
    ckpt_root = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    if ckpt_root is not None and not args.resume and ckpt_root.is_dir() and any(
        ckpt_root.iterdir()
    ):
        parser.error(
            f"--checkpoint-dir {ckpt_root} is not empty: pass --resume to continue those runs, "
            "or choose an empty directory."
        )

    # Parse and validate everything before training anything.
    method_specs: list[tuple[str, str, dict[str, Any]]] = []
    for spec in cfg["methods"]:
        if spec == "all":
            method_specs += [(n, n, {}) for n in mtopt.method_names()]
            continue
        try:
            name, options = parse_spec(spec)
            mtopt.method_info(name)
        except ValueError as err:
            parser.error(f"--methods {spec}: {err}")
        method_specs.append((spec, name, options))
    labels = [label for label, _, _ in method_specs]
    if len(set(labels)) != len(labels):
        parser.error(f"--methods lists a method twice: {labels}.")
    tasks = []
    for spec in cfg["tasks"]:
        try:
            name, options = parse_spec(spec)
            task = tasks_lib.get_task(name, **options)
        except (ValueError, TypeError) as err:
            parser.error(f"--tasks {spec}: {err}")
        tasks.append((spec, task))
    runs_plan = []
    for task_label, task in tasks:
        num_tasks = len(task.task_names)
        num_train = int(np.shape(next(iter(task.train.values())))[0])
        for label, name, options in method_specs:
            options = dict(options)
            preference = None
            # preference=[...] is a step input, not a factory option (unless a factory
            # takes one): it is checked against the method below.
            if "preference" in options and "preference" not in mtopt.method_info(
                name
            ).options():
                preference = options.pop("preference")
                if np.shape(preference) != (num_tasks,):
                    parser.error(
                        f"--methods {label}: preference must have {num_tasks} entries for "
                        f"task {task_label}, got {preference!r}."
                    )
            pref = preference if preference is not None else [1.0 / num_tasks] * num_tasks
            try:
                effective = effective_options(
                    name, options, num_tasks=num_tasks,
                    steps_per_epoch=max(1, math.ceil(num_train / cfg["batch_size"])),
                    preference=pref,
                )
                weighting = mtopt.method(name, **effective)
            except (ValueError, TypeError) as err:
                parser.error(f"--methods {label} (task {task_label}): {err}")
            # The values are known: check them now (train() would, after the baseline).
            checked = pref if preference is not None or weighting.preference == "required" \
                else None
            try:
                check_driver_preferences(weighting, checked, f"--methods {label}",
                                         name="preference")
            except ValueError as err:
                parser.error(f"{err} (task {task_label})")
            runs_plan.append((task_label, label, name, options, preference))

    command = " ".join([prog] + [shlex.quote(a) for a in argv])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(seeds=cfg["seeds"], steps=cfg["steps"], batch_size=cfg["batch_size"],
                  learning_rate=cfg["lr"], eval_every=cfg["eval_every"])
    progress = not args.no_progress
    cache_path = out / _CACHE_FILE
    start = time.perf_counter()
    results = []
    for task_label, task in tasks:
        task_ckpt = ckpt_root / slug(task_label) if ckpt_root is not None else None
        cache = _load_cache(cache_path)
        cache_key = json.dumps(
            {"task": task_label, "seeds": list(cfg["seeds"]), "steps": cfg["steps"],
             "batch_size": cfg["batch_size"], "learning_rate": cfg["lr"],
             "mtopt_version": mtopt.__version__},
            sort_keys=True,
        )
        if cache_key in cache:
            baseline = {k: np.asarray(v, np.float64) for k, v in cache[cache_key].items()}
            print(f"[{task_label}] single-task baseline: reusing {cache_path}", file=sys.stderr)
        else:
            print(f"[{task_label}] single-task baseline ...", file=sys.stderr)
            baseline = single_task_baseline(
                task, **common, progress=progress,
                checkpoint_dir=task_ckpt / "single_task" if task_ckpt is not None else None,
                resume=args.resume,
            )
            cache[cache_key] = {k: np.asarray(v).tolist() for k, v in baseline.items()}
            cache_path.write_text(json.dumps(cache, indent=1))
        runs = {}
        for t_label, label, name, options, preference in runs_plan:
            if t_label != task_label:
                continue
            print(f"[{task_label}] {label} ...", file=sys.stderr)
            runs[label] = train(
                task, name, options, **common, preference=preference, progress=progress,
                checkpoint_dir=task_ckpt / slug(label) if task_ckpt is not None else None,
                resume=args.resume,
            )
        results.append(TaskResults(label=task_label, baseline=baseline, runs=runs))

    settings = dict(cfg, quick=args.quick, seconds=round(time.perf_counter() - start, 1))
    report = write_report(out, results, command=command, settings=settings,
                          plots=not args.no_plots)
    print(markdown_table(report))
    print(f"\nWrote {out / 'results.md'}, {out / 'results.json'}"
          + ("" if args.no_plots else " and plots") + f" in {settings['seconds']} s.")
    return 0
