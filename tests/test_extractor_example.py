"""docs/adding-an-extractor.md's example, loaded from the document itself: one file and one registry line give
a group that `pipeline extract` writes in the same decode, that equals a direct torchvision call, and that a
trainer reads by name."""
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

import features.registry
from pipeline.decode import decode
from pipeline.extract import ExtractConfig, extract
from pipeline.store import FeatureStore

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-an-extractor.md"


def test_an_extractor_is_one_file_and_one_registry_line(odd_dataset, weights, tmp_path, monkeypatch):
    code = re.search(r"<!-- example-extractor -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    line = re.search(r'^\s+"mobilenet": "features\.mobilenet:MobileNetFrames",$', DOC.read_text(), re.M)
    assert code and line, "docs/adding-an-extractor.md lost its example"
    (tmp_path / "mobilenet_example.py").write_text(code.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(features.registry.EXTRACTORS, "mobilenet", "mobilenet_example:MobileNetFrames")
    torch.manual_seed(7)
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)

    store = tmp_path / "s.zarr"
    extract(ExtractConfig(manifest=odd_dataset["manifest"], captions=odd_dataset["captions"],
                          video_root=odd_dataset["video_root"], store=str(store), groups=["mobilenet", "word2vec"],
                          weights={"mobilenet": str(path)}, word2vec=weights["word2vec"], workers=0, part_size=2,
                          short_side=64, precision="fp32", progress=False))
    s = FeatureStore(store)
    assert s.groups["mobilenet"]["dim"] == 576 and s.groups["mobilenet"]["rate"] == 1.0
    i = list(s.videos["video_id"]).index("good1")
    frames = decode(os.path.join(odd_dataset["video_root"], "good1.mp4"), audio=False, short_side=64).frames
    model = torchvision.models.mobilenet_v3_small(weights=None)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.classifier = torch.nn.Identity()
    model.eval()
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        want = torch.nn.functional.normalize(model((x - mean[:, None, None]) / std[:, None, None]), dim=1)
    got = s.load_group("mobilenet").video(i).astype(np.float32)
    np.testing.assert_allclose(got, want.numpy(), atol=2e-3)  # stored as float16

    from trainers.methods.mcn import MCNConfig
    from trainers.train import train

    out = train(MCNConfig(store=str(store), out=str(tmp_path / "run"), video_groups="mobilenet", combo="vt", dim=16,
                          videos_per_batch=2, clips_per_video=2, steps=3, warmup=1, min_time=0.0, clusters=2,
                          queue_steps=1, loader_workers=0), progress=False)
    assert out["steps"] == 3 and (tmp_path / "run" / "model.pt").is_file()
    assert "mobilenet_example" in sys.modules


def test_a_second_audio_extractor_is_read_by_the_trainers(odd_dataset, weights, tmp_path, monkeypatch):
    """The document's MelStats: one file and one registry line; `--audio-group melstats` makes MCN and XDC train
    on it in place of DAVEnet."""
    text = DOC.read_text()
    code = re.search(r"<!-- example-audio-extractor -->\s*```python\n(.*?)```", text, re.S)
    assert code and '"melstats": "features.melstats:MelStats",' in text
    (tmp_path / "melstats_example.py").write_text(code.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(features.registry.EXTRACTORS, "melstats", "melstats_example:MelStats")
    store = tmp_path / "s.zarr"
    extract(ExtractConfig(manifest=odd_dataset["manifest"], captions=odd_dataset["captions"],
                          video_root=odd_dataset["video_root"], store=str(store), workers=0, part_size=2,
                          groups=["resnet152", "logmel", "melstats", "word2vec"], resnet152_weights=weights["resnet152"],
                          word2vec=weights["word2vec"], short_side=64, precision="fp32", progress=False))
    s = FeatureStore(store)
    i = list(s.videos["video_id"]).index("good1")
    mel = s.load_group("logmel").video(i).astype(np.float32)
    got = s.load_group("melstats").video(i).astype(np.float32)
    assert got.shape == (-(-len(mel) // 16), 80) and s.groups["melstats"]["rate"] == 6.25
    np.testing.assert_allclose(got[0], np.concatenate([mel[:16].mean(0), mel[:16].std(0)]), rtol=2e-3, atol=2e-2)

    from trainers.cli import main

    common = ["--store", str(store), "--audio-group", "melstats", "--loader-workers", "0", "--no-progress"]
    assert main(["mcn", "--out", str(tmp_path / "mcn"), *common, "--combo", "va", "--dim", "16", "--videos-per-batch",
                 "2", "--clips-per-video", "2", "--steps", "3", "--warmup", "1", "--min-time", "0", "--clusters", "2",
                 "--queue-steps", "1", "--normalize-audio"]) == 0
    assert main(["xdc", "--out", str(tmp_path / "xdc"), *common, "--clusters", "2", "--iterations", "1",
                 "--batch-size", "2", "--pca", "0", "--dim", "8"]) == 0
    for run in ("mcn", "xdc"):
        config = __import__("json").loads((tmp_path / run / "config.json").read_text())
        assert config["audio_group"] == "melstats" and config["audio_dim"] == 80
    assert main(["eval", "--run", str(tmp_path / "mcn"), "--store", str(store)]) == 0  # rebuilt with 80-d audio
