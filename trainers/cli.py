"""`trainers` command line: mcn, eval, report."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from .mcn import MCNConfig


def add_dataclass_args(p: argparse.ArgumentParser, cls) -> None:
    """One --flag per dataclass field (bools become switches)."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true")
        elif f.default is MISSING:
            p.add_argument(flag, required=True)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), type(f.default) if f.default is not None else str)
            p.add_argument(flag, type=kind, default=f.default, help=f"default {f.default}")


def cmd_mcn(args) -> int:
    from .mcn import train

    cfg = MCNConfig(**{f.name: getattr(args, f.name) for f in fields(MCNConfig)})
    print(json.dumps(train(cfg, progress=not args.no_progress)))
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate, table

    print(table(evaluate(args.run, args.store, args.label, args.audio_frames)))
    print(f"results: {Path(args.run) / 'eval.json'}; embeddings: {Path(args.run) / 'embeddings.zarr'}")
    return 0


def cmd_report(args) -> int:
    from .report import plot

    print(f"wrote {plot(args.run)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="trainers", description="Train and evaluate models on a feature store.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("mcn", help="train MCN heads (MMS + clustering + reconstruction) on cached features")
    add_dataclass_args(p, MCNConfig)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_mcn)
    p = sub.add_parser("eval", help="retrieval and clustering on a held-out store; exports embeddings")
    p.add_argument("--run", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--label", help="label column for clustering (default: every usable label column)")
    p.add_argument("--audio-frames", type=int, default=5120, help="log-mel frames per clip (end-to-end audio)")
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("report", help="PNG loss curves of a run")
    p.add_argument("--run", required=True)
    p.set_defaults(fn=cmd_report)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
