"""`trainers` command line: mcn, eval, report."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from . import mcn, mmv, selavi, xdc
from .mcn import MCNConfig
from .mmv import MMVConfig
from .selavi import SeLaViConfig
from .xdc import XDCConfig


def field_comments(cls) -> dict[str, str]:
    """Each field's comment in the dataclass source: the ``#`` lines right above it and the one after it."""
    import inspect
    import re

    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
        elif m := re.match(r"(\w+): [^=#]+(?:=[^#]*)?(?:#\s*(.*))?$", text):
            out[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
            above = []
        else:
            above = []
    return out


def add_dataclass_args(p: argparse.ArgumentParser, cls) -> None:
    """One --flag per dataclass field (bools become switches), its help the field's comment and default."""
    notes = field_comments(cls)
    for f in fields(cls):
        flag, note = "--" + f.name.replace("_", "-"), notes.get(f.name, "")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", help=note or None)
        elif f.default is MISSING:
            p.add_argument(flag, required=True, help=note or None)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), type(f.default) if f.default is not None else str)
            p.add_argument(flag, type=kind, default=f.default,
                           help=f"{note} (default {f.default if f.default != '' else 'none'})".lstrip())


def trainer(name: str):
    """`trainers <method>`: fill the method's config dataclass from the flags and train."""
    def run(args) -> int:
        cls, train = METHODS[name]
        cfg = cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
        out = train(cfg, progress=not args.no_progress)
        print(json.dumps({k: v for k, v in out.items() if k not in ("metrics", "best_head", "mean_over_heads")}))
        if "metrics" in out:
            from .clustering import table
            print(table(out))
            print(f"labels: {cfg.out}/labels.csv, {cfg.out}/labels.zarr; metrics: {cfg.out}/results.json")
        return 0
    return run


METHODS = {"mcn": (MCNConfig, mcn.train), "mmv": (MMVConfig, mmv.train), "xdc": (XDCConfig, xdc.train),
           "selavi": (SeLaViConfig, selavi.train)}
HELP = {"mcn": "MCN heads (MMS + clustering + reconstruction) over cached features",
        "mmv": "MMV FAC/shared/disjoint heads with NCE (video-audio) and MIL-NCE (video-text)",
        "xdc": "XDC / MDC / CDC / SDC: k-means pseudo-labels from one modality supervise the other",
        "selavi": "SeLaVi: Sinkhorn-Knopp pseudo-labels shared by video and audio, several heads"}


def cmd_eval(args) -> int:
    from .evaluate import evaluate, table

    print(table(evaluate(args.run, args.store, args.label, args.audio_frames, args.max_score_clips)))
    print(f"results: {Path(args.run) / 'eval.json'}; embeddings: {Path(args.run) / 'embeddings.zarr'}")
    return 0


def cmd_report(args) -> int:
    from .report import plot

    print(f"wrote {plot(args.run)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="trainers", description="Train and evaluate models on a feature store.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_text in HELP.items():
        p = sub.add_parser(name, help=help_text)
        add_dataclass_args(p, METHODS[name][0])
        p.add_argument("--no-progress", action="store_true")
        p.set_defaults(fn=trainer(name))
    p = sub.add_parser("eval", help="retrieval and clustering on a held-out store; exports embeddings")
    p.add_argument("--run", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--label", help="label column for clustering (default: every usable label column)")
    p.add_argument("--audio-frames", type=int,
                   help="log-mel frames per clip for end-to-end audio, 100 per second (default: the run's own "
                        "--audio-frames, so training and evaluation read the same window)")
    p.add_argument("--max-score-clips", type=int, default=50_000,
                   help="score retrieval and clustering up to this many clips (N x N scores); embeddings of "
                        "every clip are exported regardless (default 50000)")
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
