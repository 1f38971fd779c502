"""`pipeline` command line: extract, status, demo."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from features.optional import MissingExtra

from .config import add_dataclass_args, config_from_args, quiet_broken_pipe
from .extract import ExtractConfig, ExtractError
from .store import DiskFull

DESCRIPTION = "Decode each video once, run frozen extractors, write a resumable Zarr feature store."


def print_summary(summary: dict) -> None:
    print(f"store {summary['store']}: {summary['videos']} videos, {summary['clips']} clips; "
          f"{summary['parts_run']} part tasks run this time")
    if summary.get("precision"):
        why = summary.get("precision_why", {})
        rates = ", ".join(f"{k} {v}" for k, v in why.get("frames_per_s", {}).items())
        print(f"  precision {summary['precision']}, {summary['batch_size']} per forward"
              + (f" (probe of {why['group']} at {why['threads']} threads, batch {why['batch']}: {rates} per s; "
                 f"{why['source']})" if rates else f" ({why.get('source', '')})"))
    if summary.get("decoder") == "nvdec":
        print(f"  decoder nvdec; {summary.get('nvdec_cpu_fallback', 0)} videos NVDEC could not take went to the CPU "
              f"decoder this time; picks, audio and log-mel made in {summary.get('nvdec_prepare_processes', 0)} CPU "
              "processes per worker")
    if summary.get("problems"):
        print(f"  {summary['problems']} manifest/caption problems (`pipeline status --problems N` lists them)")
    for g, counts in summary.get("status", {}).items():
        past = summary.get("clips_past_end", {}).get(g, 0)
        print(f"  {g:10s} " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
              + (f"; {past} clips start past their video's end (no {g} to read: trainers drop them)" if past else ""))
    for g, counts in summary.get("text", {}).items():
        print(f"  {g:10s} " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for part, err in summary.get("failed_parts", {}).items():
        print(f"  part {part} FAILED (rerun to retry): {err}")


EXIT_FAILURES = 1  # extraction finished, but some videos or parts failed (exit 2: unusable input)


def cmd_extract(args) -> int:
    from .extract import extract

    summary = extract(config_from_args(ExtractConfig, args, args.parser))
    print_summary(summary)
    failed = {g: sum(n for k, n in counts.items() if k != "ok") for g, counts in summary.get("status", {}).items()}
    if summary.get("failed_parts") or any(failed.values()):
        print(f"finished with failures ({', '.join(f'{g}: {n} videos not ok' for g, n in failed.items() if n)}"
              f"{'; whole parts failed' if summary.get('failed_parts') else ''}): `pipeline status --store "
              f"{summary['store']}` lists them; fix what they say, then rerun with --retry-failed", file=sys.stderr)
        return EXIT_FAILURES
    return 0


def cmd_status(args) -> int:
    import numpy as np

    from .store import FeatureStore

    store = FeatureStore(args.store)
    emit = print if not args.json else (lambda line: None)  # --json: stdout is the JSON object alone
    emit(f"{store.path}: {store.n_videos} videos, {store.n_clips} clips, {store.n_parts} parts; "
          f"{store.meta.get('manifest_problems', 0)} manifest problems")
    for line in store.problems(args.problems):
        emit(f"    {line}")
    out = {"videos": store.n_videos, "clips": store.n_clips, "groups": {}}
    failed = store.attrs.get("failed_parts", {})
    if failed:
        out["failed_parts"] = failed
        emit(f"  {len(failed)} parts failed as a whole in the last run that ran them (pending until a rerun "
             "finishes them):")
        for part, why in list(failed.items())[: args.show]:
            emit(f"      part {part}: {why}")
    for g, meta in store.groups.items():
        if g == "word2vec":
            if not (store.path / "word2vec").is_dir():
                continue
            counts = store.text_status_counts()
            vocab = len(store.word_vectors())
            out["groups"][g] = {"status": counts, "vocab": vocab}
            emit(f"  word2vec   vocab {vocab}; " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
            continue
        if store.rate(g) is None:  # a per-clip text group (text/<group>)
            if (store.path / "text" / g).is_dir():
                counts = store.text_status_counts(g)
                out["groups"][g] = {"status": counts}
                emit(f"  {g:10s} per clip; " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
            continue
        status, error = store.video_status(g)
        vals, counts = np.unique(status.astype(str), return_counts=True)
        fails = [(str(store.videos["video_id"][i]), str(status[i]), str(error[i]))
                 for i in np.flatnonzero((status != "ok") & (status != "pending"))]
        past = int(store.video_clips_beyond(g).sum())
        out["groups"][g] = {"status": dict(zip(vals.tolist(), counts.tolist())), "failures": fails,
                            "random_init": meta.get("random_init"), "weights_sha256": meta.get("weights_sha256"),
                            "clips_past_end": past}
        tag = " (RANDOM-INIT weights)" if meta.get("random_init") else ""
        tag += f"; {past} clips start past their video's end (trainers drop them)" if past else ""
        emit(f"  {g:10s} " + ", ".join(f"{k}={v}" for k, v in zip(vals, counts)) + tag)
        for vid, st, err in fails[: args.show]:
            emit(f"      {vid}: {st}: {err}")
        if len(fails) > args.show:
            emit(f"      ... {len(fails) - args.show} more (--show N)")
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


def cmd_import(args) -> int:
    from .transfer import ImportConfig, import_features

    names = set(ImportConfig.__dataclass_fields__)
    summary = import_features(ImportConfig(**{k: v for k, v in vars(args).items() if k in names}))
    print(f"store {summary['store']}: group {summary['group']}, {summary['videos']} videos; {summary['parts_run']} "
          "parts imported this time; " + ", ".join(f"{k}={v}" for k, v in sorted(summary["status"].items())))
    return 0 if set(summary["status"]) <= {"ok"} else EXIT_FAILURES


def cmd_export(args) -> int:
    from .transfer import export_clips, export_features

    if args.format == "parquet":
        r = export_clips(args.store, args.out, not args.no_progress)
        print(f"wrote the clip table ({r['clips']} clips) to {r['out']}")
        return 0
    if not args.group:
        raise ValueError(f"--format {args.format} writes a feature group: give --group (e.g. resnet152)")
    r = export_features(args.store, args.group, args.format, args.out, args.dtype, not args.no_progress)
    print(f"wrote {r['videos']} videos of {r['group']} to {r['out']} ({r['format']}); "
          f"{r['skipped (not ok)']} videos without usable features skipped")
    return 0


def cmd_verify(args) -> int:
    from .store.location import is_url
    from .store.verify import repair, verify
    from .store import FeatureStore, StoreLock

    store = FeatureStore(args.store)
    if is_url(args.store) and args.repair:  # read-only there: repaired in the local copy it was synced from
        print(f"error: --repair works on a local store; verify and repair the copy {args.store} was synced "
              "from, then sync it again", file=sys.stderr)
        return 2
    lock = None if is_url(args.store) else StoreLock(store.path)
    try:
        if args.repair and not lock.run():
            print(f"error: an extraction is running on {store.path}; --repair when it has finished", file=sys.stderr)
            return 2
        report = verify(store, progress=not args.no_progress)
        print(f"{store.path}: {report.checked_units} units, {report.checked_bytes / 1e6:.1f} MB of chunk files "
              f"checked; {len(report.damaged)} damaged" + (f"; {report.unsealed_arrays} arrays carry no checksums "
                                                             "(written before mmcache recorded them)"
                                                             if report.unsealed_arrays else ""))
        for unit, problems in report.damaged.items():
            print(f"  DAMAGED {unit}")
            for line in problems[:args.show]:
                print(f"      {line}")
        if not report.damaged:
            return 0
        if not args.repair:
            print("rerun with --repair to remove the damaged units; `pipeline extract` with the same flags "
                  "then recomputes them", file=sys.stderr)
            return EXIT_FAILURES
        plan = repair(store, report)
    finally:
        if lock is not None:
            lock.close()
    for unit in report.repaired:
        print(f"  removed {unit}")
    if plan:
        print(f"the plan ({', '.join(plan)}) is damaged and cannot be recomputed in place: plan a new store from "
              f"the manifest (pipeline extract --manifest {store.meta.get('manifest')} --store NEW.zarr ...)",
              file=sys.stderr)
        return EXIT_FAILURES
    print(f"now rerun `pipeline extract` on {store.path} with the flags it was made with: it recomputes "
          f"{len(report.repaired)} removed units")
    return 0


def cmd_demo(args) -> int:
    from .demo import build_demo

    print("NOTE: no pretrained weights here, so ResNet-152 and DAVEnet run RANDOM-INIT (recorded in the store)")
    paths, summaries = build_demo(args.out, args.videos, args.eval_videos, args.short_side, args.workers,
                                  not args.no_progress)
    print(f"demo data written to {args.out}/ (videos, howto100m.csv, captions.json, eval.csv, word2vec.bin)")
    for summary in summaries:
        print_summary(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("extract", help="extract features into a store (resumes; idempotent)")
    add_dataclass_args(p, ExtractConfig)
    p.set_defaults(fn=cmd_extract, parser=p)
    p = sub.add_parser("status", help="counts and failures per feature group")
    p.add_argument("--store", required=True, help="the feature store")
    p.add_argument("--show", type=int, default=20, help="failures to list per group (default 20)")
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object, nothing else")
    p.add_argument("--problems", type=int, default=10, help="manifest/caption problems to list (default 10)")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("import", help="released pre-extracted features (<video_id>.npy files or an .h5) into a "
                                      "store group; no video needed")
    p.add_argument("--manifest", required=True, help="the videos' manifest, as for `pipeline extract`")
    p.add_argument("--captions", help="captions JSON or table (HowTo100M manifests), as for `pipeline extract`")
    p.add_argument("--store", required=True, help="the store to plan (or add the group to)")
    p.add_argument("--features", required=True, help="folder of <video_id>.npy (T, D) arrays, or an .h5 file "
                                                        "with one dataset per video id")
    p.add_argument("--group", required=True, help="group name (resnet152, r3d_18, ... or your own)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="feature rows per second of video (default 1.0; HowTo100M 2D: 1.0, 3D: 1.5)")
    p.add_argument("--part-size", type=int, help="videos per part (default: as `pipeline extract` chooses)")
    p.add_argument("--strict", action="store_true", help="abort on any bad manifest row")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(fn=cmd_import)
    p = sub.add_parser("export", help="write a group out: <video_id>.npy files or one .h5 (dataset per video); "
                                      "or the clip table as Parquet")
    p.add_argument("--store", required=True, help="the feature store")
    p.add_argument("--group", help="the per-video feature group to write out (e.g. resnet152; not for parquet)")
    p.add_argument("--format", choices=["npy", "h5", "parquet"], required=True,
                   help="npy: a <video_id>.npy (T, D) per video; h5: one file, a dataset per video id; parquet: "
                        "the clip table (key, video_id, start, end, text, labels) for pandas, DuckDB, datasets")
    p.add_argument("--out", required=True, help="folder (npy) or file (h5, parquet)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="array type written (default float32; the store keeps float16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("verify", help="re-read every chunk file against its checksum, check every unit's "
                                      "shapes; --repair removes damaged units for `extract` to recompute")
    p.add_argument("--store", required=True, help="the feature store")
    p.add_argument("--repair", action="store_true",
                   help="remove the damaged units (parts, word2vec, status) so the next extract recomputes them")
    p.add_argument("--show", type=int, default=5, help="problems to list per damaged unit (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_verify)
    p = sub.add_parser("demo", help="generate the built-in demo dataset and extract it (`trainers demo` also "
                                    "trains, evaluates and compares)")
    p.add_argument("--out", default="demo", help="folder of the demo's videos, manifests and stores (default demo)")
    p.add_argument("--videos", type=int, default=32, help="training videos, HowTo100M-style manifest (default 32)")
    p.add_argument("--eval-videos", type=int, default=16, help="held-out videos, one clip per row (default 16)")
    p.add_argument("--short-side", type=int, default=112,
                   help="decoded frame short side in pixels (default 112 keeps the demo quick; HowTo100M: 224)")
    p.add_argument("--workers", type=int, help="local Dask workers (default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.fn(args)
    except BrokenPipeError:
        return quiet_broken_pipe()
    except DiskFull as e:  # the environment, not the input: rerunning resumes
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURES
    except (ExtractError, FileNotFoundError, ValueError, KeyError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
