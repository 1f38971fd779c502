"""The Method protocol: what one self-supervised method adds to the one training loop (trainers/train.py),
and the config fields every method shares. A method steps no optimiser, writes no checkpoint or log line."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from .clips import ClipSpec
from .loader import default_workers

# flags renamed so that one idea has one name in every trainer: old name -> new (older config.json files and
# the old flags still work)
RENAMED = {"k": "clusters", "feat_dim": "dim"}


@dataclass(kw_only=True)
class TrainConfig:
    """The flags every trainer takes, one name per idea (a method's config adds its own)."""
    store: str  # the feature store to train on (`pipeline extract --store`)
    out: str  # run folder: config.json, checkpoint.pt, metrics.jsonl, model.pt
    # ours = the defaults below (where they differ from the paper, the help says so and docs/fidelity.md why);
    # paper = the authors' released settings, value for value, except plain bugs (docs/fidelity.md); flags
    # given beside --recipe override it
    recipe: Literal["ours", "paper"] = "ours"
    # video groups, comma-separated: each max-pooled over the clip, L2-normalised, concatenated (MCN: 2D|3D,
    # e.g. resnet152,r2plus1d_18)
    video_groups: str = "resnet152"
    # the frozen audio group (without --end-to-end-audio): any group of rows per second, sum-pooled over each
    # clip as MCN pools DAVEnet's (e.g. a new audio extractor's name)
    audio_group: str = "davenet"
    seed: int = 1  # initialisation, batches and augmentation are a function of the seed
    device: str = "cpu"  # cpu or cuda[:N] (bf16 autocast on CUDA)
    resume: bool = False  # continue the run in --out from its last checkpoint, to the same weights
    log_every: int = 10  # steps between lines of metrics.jsonl
    checkpoint_every: int = 100  # steps between atomic checkpoints, 0: only where the method says and at the end
    loader_workers: int = default_workers()  # processes forming batches beside training (0: in-process)

    def __post_init__(self):
        """A value outside a ``Literal`` field's choices is refused, naming the flag (the CLI's choices check
        the same; this covers configs built in code and from a config.json)."""
        for name, hint in typing.get_type_hints(type(self)).items():
            if typing.get_origin(hint) is typing.Literal and getattr(self, name) not in typing.get_args(hint):
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: choose "
                                 + " or ".join(typing.get_args(hint)))
        check_warmup(getattr(self, "warmup", 0), getattr(self, "steps", 0))


def check_warmup(warmup: int, steps: int) -> None:
    """A warm-up as long as the run keeps the learning rate below its peak throughout: refused."""
    if warmup and steps and warmup >= steps:
        raise ValueError(f"--warmup {warmup} is not shorter than the run's {steps} steps: the learning rate would "
                         "never leave its warm-up; give a shorter --warmup or more --steps")


class Method:
    """One method over the cache. ``setup`` builds what the loop drives; the loop calls, per step,
    ``schedule`` (k-means refits, relabelling), ``forward`` (under the run's autocast) and ``loss`` (fp32)."""
    name: ClassVar[str]  # the subcommand: `trainers <name>`
    help: ClassVar[str]  # one line for `trainers --help`
    Config: ClassVar[type]  # its dataclass, a TrainConfig

    legacy: ClassVar[dict] = {}  # values of fields an older config.json lacks (how those runs were trained)
    paper: ClassVar[dict] = {}  # `--recipe paper`: the authors' released values of the fields they set

    @classmethod
    def recipes(cls) -> dict[str, dict]:
        """Field values per recipe: ``paper`` the authors', ``ours`` our defaults of the same fields."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls.Config)}
        return {"ours": {k: defaults[k] for k in cls.paper}, "paper": dict(cls.paper)}

    @classmethod
    def configure(cls, recipe: str = "ours", **values):
        """The config of ``recipe`` with ``values`` over it (as `trainers <name> --recipe R --flag value`)."""
        return cls.Config(**{**cls.recipes()[recipe], **values, "recipe": recipe})

    model: nn.Module  # what model.pt holds and `trainers eval` embeds with
    optimizers: list[torch.optim.Optimizer]
    schedulers: list  # LR schedulers, stepped after the optimisers
    spec: ClipSpec  # what the training loader reads of each clip
    steps: int  # optimiser steps of the whole run

    def __init__(self, cfg):
        self.cfg = cfg
        self.schedulers = []

    def setup(self) -> dict[str, Any]:
        """Open the store, build the model and its optimisers; return what config.json records beside the
        flags (the input sizes a saved model is rebuilt with)."""
        raise NotImplementedError

    def describe(self, step: int) -> str:
        """The start-up line."""
        return f"{self.name}: {self.steps} steps, starting at step {step}"

    def sampler(self, step: int):
        """(sample, end): ``sample(reader, s)`` -> clip indices of step s, a pure function of (seed, s) valid for
        steps ``step`` to ``end`` (exclusive; a relabelling may change the sampler there). Called after
        ``schedule(step)``."""
        raise NotImplementedError

    def schedule(self, step: int) -> dict[str, float]:
        """Work due at the start of ``step`` (k-means refits, relabelling); what it returns is logged."""
        return {}

    def forward(self, batch: dict, step: int):
        """The model on a batch (a ClipReader batch as tensors), run under autocast; floats come back as fp32."""
        raise NotImplementedError

    def loss(self, out, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """The loss terms of a step, in fp32; "loss" is the one that is minimised."""
        raise NotImplementedError

    def checkpoint_due(self, step: int) -> bool:
        """A checkpoint after ``step`` besides every --checkpoint-every (e.g. at an iteration's end)."""
        return False

    def state_dict(self) -> dict:
        """What a resume needs besides the model, optimisers, schedulers, step and RNG."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Called before the optimisers are restored (a method may rebuild an optimiser here)."""

    def finish(self, run) -> dict:
        """After the last step (``run``: the run folder): labels, results; merged into train()'s return."""
        return {}

    # ---- a trained run, for `trainers eval`, `probe`, `crosstask` ----------------------------------------
    @classmethod
    def eval_spec(cls, cfg) -> ClipSpec:
        """How a run's clips are read for evaluation: as trained, each caption alone (no merging), and for
        every method the same clips: those with a known caption word (strict)."""
        raise NotImplementedError

    @classmethod
    def rebuild(cls, cfg, raw: dict, state: dict) -> nn.Module:
        """The trained model from its config, what config.json recorded (``raw``) and model.pt (``state``):
        a module with ``embed(video, audio, words, nframes) -> {space: {modality: embedding}}``."""
        raise NotImplementedError
