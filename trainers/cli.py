"""`trainers` command line: one subcommand per registered method, then eval, compare, crosstask, probe,
export, report, map, demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from features.optional import MissingExtra
from pipeline.config import add_dataclass_args, config_from_args, quiet_broken_pipe

from .method import RENAMED
from .methods import methods


def trainer(name: str, method, parser: argparse.ArgumentParser):
    """`trainers <method>`: the method's config from the flags (over a --recipe, over a --config file) and
    train, or print it (--print-config)."""
    def run(args) -> int:
        from dataclasses import asdict

        from .train import train

        if args.config and Path(args.config).is_file() and \
                (was := json.loads(Path(args.config).read_text()).get("method", name)) != name:
            parser.error(f"--config {args.config} is a {was} run's; use `trainers {was} --config ...`")
        cfg = config_from_args(method.Config, args, parser, RENAMED, method.recipes(), require=not args.print_config)
        if args.print_config:
            print(json.dumps({"method": name, **asdict(cfg)}, indent=1))
            return 0
        out = train(cfg, progress=not args.no_progress)
        print(json.dumps({k: v for k, v in out.items() if k not in ("metrics", "best_head", "mean_over_heads")}))
        if "metrics" in out:
            from .clustering import table
            print(table(out))
            print(f"labels: {cfg.out}/labels.csv, {cfg.out}/labels.zarr; metrics: {cfg.out}/results.json")
        return 0
    return run



def cmd_eval(args) -> int:
    from .evaluate import evaluate, table

    print(table(evaluate(args.run, args.store, args.label, args.audio_frames, args.max_score_clips, args.ties,
                         args.dropped, args.allow_other_features)))
    print(f"results: {Path(args.run) / 'eval.json'}; embeddings: {Path(args.run) / 'embeddings.zarr'}")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare, text

    out = args.out or str(Path(args.runs[0]).parent / "compare")
    result = compare(args.runs, out)
    print(text(result))
    print(f"table: {result['csv']}; charts: {result['png']}")
    return 0


def cmd_crosstask(args) -> int:
    from .crosstask import crosstask

    if not args.release and not (args.steps and args.annotations):
        raise ValueError("give the CrossTask release folder (--release DIR), or --steps and --annotations")
    r = crosstask(args.run, args.store, args.steps, args.annotations, args.word2vec, release=args.release,
                  videos=args.videos, max_words=args.max_words, allow_other_features=args.allow_other_features)
    print(f"CrossTask step localisation of {args.run} on {args.store}: average recall {100 * r['average recall']:.1f}% "
          f"(per-video mean, MCN's average: {100 * r['average recall, per-video mean (MCN)']:.1f}%; random scores: "
          f"{100 * r['chance']:.1f}%)")
    for task, t in r["tasks"].items():
        print(f"  {task:24s} recall {100 * t['recall']:5.1f}%  ({t['videos']} videos)")
    if r["missing videos"]:
        print(f"  {len(r['missing videos'])} annotated videos not usable in the store: {r['missing videos'][:5]}")
    for note in r.get("features differ from training (--allow-other-features)", []):
        print(f"  WARNING: features differ from training: {note}")
    print(f"results: {Path(args.run) / 'crosstask.json'}")
    return 0


def cmd_probe(args) -> int:
    from .probe import probe

    r = probe(args.run, args.store, args.label, args.features, args.folds, args.split, args.zero_shot,
              args.class_names, args.word2vec, args.allow_other_features)
    how = f"on {r['linear probe']['test clips']} test clips" if "test clips" in r["linear probe"] else \
        f"{r['linear probe']['folds']}-fold"
    print(f"{r['label']}: {r['clips']} clips, {r['classes']} classes, features {','.join(r['features'])}; "
          f"chance (largest class) {100 * r['chance (largest class)']:.1f}%")
    for name in ("linear probe", "linear probe, frozen features"):
        if name in r:
            p = r[name]
            std = f" +- {100 * p['std']:.1f}" if "std" in p else ""
            print(f"  {name:30s} accuracy {100 * p['accuracy']:5.1f}%{std} ({how})")
    if "zero-shot" in r:
        print(f"  {'zero-shot':30s} accuracy {100 * r['zero-shot']['accuracy']:5.1f}% (chance "
              f"{100 * r['zero-shot']['chance']:.1f}%)")
    for note in r.get("features differ from training (--allow-other-features)", []):
        print(f"  WARNING: features differ from training: {note}")
    print(f"results: {Path(args.run) / f'probe-{args.label}.json'}")
    return 0


def cmd_demo(args) -> int:
    from .demo import demo

    demo(args.out, args.steps, args.workers, not args.no_progress)
    return 0


def cmd_export(args) -> int:
    from .export import export

    out = export(args.run)
    print(f"weights: {out['weights']}; run card: {out['card']}")
    return 0


def cmd_report(args) -> int:
    from .report import plot

    print(f"wrote {plot(args.run)}")
    return 0


def cmd_map(args) -> int:
    from .report import embedding_map

    print(f"wrote {embedding_map(args.run, args.store, args.label, args.embedding, args.method)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainers", description="Train and evaluate models on a feature store.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, method in methods().items():
        p = sub.add_parser(name, help=method.help, description=method.help)
        add_dataclass_args(p, method.Config, {new: [old] for old, new in RENAMED.items()
                                              if new in method.Config.__dataclass_fields__})
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--print-config", action="store_true",
                       help="print the config these flags give (e.g. `--recipe paper --print-config`) and exit")
        p.set_defaults(fn=trainer(name, method, p))
    p = sub.add_parser("eval", help="retrieval and clustering on a held-out store; exports embeddings")
    p.add_argument("--run", required=True, help="a run folder (`trainers <method> --out`)")
    p.add_argument("--store", required=True, help="the held-out feature store to embed and score")
    p.add_argument("--label", help="label column for clustering (default: every usable label column)")
    p.add_argument("--audio-frames", type=int,
                   help="log-mel frames per clip for end-to-end audio, 100 per second (default: the run's own "
                        "--audio-frames, so training and evaluation read the same window)")
    p.add_argument("--max-score-clips", type=int, default=50_000,
                   help="score retrieval and clustering up to this many clips (N x N scores); embeddings of "
                        "every clip are exported regardless (default 50000)")
    p.add_argument("--ties", choices=["pessimistic", "optimistic"], default="pessimistic",
                   help="a tie with the true item: pessimistic = counts against it (default); optimistic = a hit, "
                        "as MCN's compute_metrics")
    p.add_argument("--dropped", choices=["skip", "miss"], default="skip",
                   help="clips missing a modality: skip = left out of N and counted (default); miss = each a "
                        "missed query, the MSR-VTT convention (N = every clip)")
    p.add_argument("--allow-other-features", action="store_true",
                   help="score a store whose features were extracted otherwise than the training store's (other "
                        "weights, precision, word2vec...): refused by default; the results then list what differs")
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("compare", help="runs side by side: eval metrics, training time, the flags that differ "
                                       "(table, CSV, PNG)")
    p.add_argument("runs", nargs="+", help="run folders with eval results (`trainers eval`), e.g. runs/*")
    p.add_argument("--out", help="path of the CSV and PNG, without suffix (default: compare beside the first run)")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("crosstask", help="zero-shot step localisation (CrossTask protocol): each second scored "
                                         "against the task's step texts, steps placed by CrossTask's DP, recall")
    p.add_argument("--run", required=True, help="a trained MCN or MMV run (a space holding text)")
    p.add_argument("--store", required=True, help="the annotated videos, extracted by `pipeline extract`")
    p.add_argument("--release", metavar="DIR",
                   help="the official CrossTask release folder (tasks_primary.txt, videos_val.csv, annotations/)")
    p.add_argument("--videos", default="videos_val.csv",
                   help="with --release: the video list to score, a file of the folder (default videos_val.csv)")
    p.add_argument("--steps", help="without --release: step texts, JSON {task: [step text, ...]} or CSV "
                                   "task,step,text")
    p.add_argument("--annotations",
                   help="without --release: CSV video_id,task,step,start,end (step: 1-based index into the task's "
                        "steps; seconds)")
    p.add_argument("--max-words", type=int, default=30,
                   help="word2vec words read per step text (default 30, as MCN's CrossTask runs)")
    p.add_argument("--word2vec", help="the .bin the store's captions were tokenised with (default: the path the "
                                      "store recorded, checked by SHA-256)")
    p.add_argument("--allow-other-features", action="store_true",
                   help="score a store whose features were extracted otherwise than the training store's (other "
                        "weights, precision, word2vec...): refused by default; the results then list what differs")
    p.set_defaults(fn=cmd_crosstask)
    p = sub.add_parser("probe", help="linear probe (and zero-shot) classification of a label column from a run's "
                                     "exported embeddings (`trainers eval` first)")
    p.add_argument("--run", required=True, help="a run folder with exported embeddings; writes <run>/probe-<label>.json")
    p.add_argument("--store", required=True, help="the store `trainers eval` exported the run's embeddings of")
    p.add_argument("--label", required=True, help="the label column to predict (e.g. task)")
    p.add_argument("--features", default="v",
                   help="embeddings to probe: v, a, t, va (that modality in every space) or array names such as "
                        "all_v,va_a (default v)")
    p.add_argument("--folds", type=int, default=5, help="stratified cross-validation folds (default 5)")
    p.add_argument("--split", help="COLUMN=VALUE: clips whose label column COLUMN is VALUE are the test set "
                                   "(instead of folds), e.g. split=test")
    p.add_argument("--zero-shot", action="store_true",
                   help="also classify each clip by the nearest class-name text embedding (a run with a text space)")
    p.add_argument("--class-names", help="CSV label,text: the text each class is named by (default: the label itself)")
    p.add_argument("--word2vec", help="the .bin the store's captions were tokenised with (default: recorded path)")
    p.add_argument("--allow-other-features", action="store_true",
                   help="score a store whose features were extracted otherwise than the training store's (other "
                        "weights, precision, word2vec...): refused by default; the results then list what differs")
    p.set_defaults(fn=cmd_probe)
    p = sub.add_parser("export", help="a run as others take it: model.safetensors and RUN.md (method, recipe, "
                                      "settings that differ from the paper, code, store, features, evaluation)")
    p.add_argument("--run", required=True, help="a finished run folder; writes <run>/model.safetensors, <run>/RUN.md")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("report", help="PNG of a run: loss curves (log scale) and its retrieval table")
    p.add_argument("--run", required=True, help="a run folder; writes <run>/losses.png")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("map", help="PNG: a 2-D map (PCA or t-SNE) of a run's exported clip embeddings coloured "
                                   "by a label")
    p.add_argument("--run", required=True, help="a run folder with exported embeddings; writes <run>/map-<label>.png")
    p.add_argument("--store", required=True, help="the store `trainers eval` exported the run's embeddings of")
    p.add_argument("--label", required=True, help="label column the points are coloured by")
    p.add_argument("--embedding", help="exported arrays to map, comma-separated, e.g. all_v or va_a "
                                       "(default: the first space's video embedding)")
    p.add_argument("--method", choices=["pca", "tsne"], default="pca", help="2-D projection (default pca)")
    p.set_defaults(fn=cmd_map)
    p = sub.add_parser("demo", help="the whole product on built-in demo data in a few minutes: generate, extract, "
                                    "train an ablation, evaluate, compare")
    p.add_argument("--out", default="demo", help="folder for the data, stores and runs (default demo)")
    p.add_argument("--steps", type=int, default=150, help="training steps per run (default 150)")
    p.add_argument("--workers", type=int, help="extraction's local Dask workers (default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except BrokenPipeError:  # `trainers ... | head`
        return quiet_broken_pipe()
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
