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
