"""`--decoder nvdec`: the frames NVDEC is asked for are exactly the CPU path's picks; the path from NVDEC's
frames to the extractors (rotation, scaling, batches, the CPU fallback) runs here on a stand-in PyNvVideoCodec
that decodes with PyAV; the real NVDEC is compared with the CPU decode where a GPU and PyNvVideoCodec are."""
import sys
import types

import av
import numpy as np
import pytest
import torch

from pipeline.decode import DecodeFailure, FrameStream, _scaled_size, decode
from pipeline.decode_nvdec import decode_nvdec, fps_picks, unavailable
from pipeline.demo import write_video
from test_decode import scaled, write_pattern, write_vfr


def all_frames(path):
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


@pytest.mark.parametrize("name", ["v_GGSY1Qvo990", "v_ZNVhz7ctTq0"])
def test_picks_from_timestamps_are_the_frames_the_cpu_decode_gives(real_videos, name):
    """1 fps and a dense 8 fps selection: frame picks[k] of a full decode, scaled as the CLI does, is bit for bit
    the k-th frame `pipeline.decode` gives; nothing but the first frame is decoded to choose them."""
    path = str(real_videos[name])
    info, (one, dense) = fps_picks(path, [1.0, 8.0])
    cpu = decode(path, audio=False).frames
    cpu_dense = []
    decode(path, frames=False, audio=False, streams=[FrameStream(8.0, 112, cpu_dense.extend, 8)])
    frames = all_frames(path)
    assert info["frames"] == len(frames) and info["codec"] == "h264" and info["rotation"] == 0
    assert len(one) == len(cpu) and len(dense) == len(cpu_dense) > 100
    for picks, got, side in ((one, cpu, 224), (dense, cpu_dense, 112)):
        w, h = _scaled_size(*info["size"], side)
        for k, i in enumerate(picks):
            np.testing.assert_array_equal(scaled(frames[i], w, h), got[k])


def test_picks_with_b_frames_and_a_variable_frame_rate(tmp_path):
    """Reordered decode (B-frames, keyframe every 15) and irregular gaps: the picks still match frame by frame."""
    write_video(tmp_path / "b.mp4", 9.0, size=(96, 64), fps=30, gop=15, tone=None)
    path = tmp_path / "vfr.mp4"
    write_vfr(path, np.cumsum(np.r_[0, np.random.default_rng(1).uniform(0.02, 0.4, 40)]))
    for video in (tmp_path / "b.mp4", path):
        info, (one,) = fps_picks(str(video), [1.0])
        cpu = decode(str(video), audio=False, short_side=48).frames
        frames = all_frames(video)
        w, h = _scaled_size(*info["size"], 48)
        assert len(one) == len(cpu) >= 8
        for k, i in enumerate(one):
            np.testing.assert_array_equal(scaled(frames[i], w, h), cpu[k])


class StandIn:
    """PyNvVideoCodec as `decode_nvdec` uses it, decoding with PyAV on the CPU: every frame in presentation order as
    interleaved RGB (H, W, 3) in coded orientation, as NVDEC gives it; records the indices asked for."""
    asked: list = []
    opened: list = []

    class OutputColorType:
        NATIVE, RGB, RGBP = "native", "rgb", "rgbp"

    class SimpleDecoder:
        def __init__(self, path, gpu_id=0, use_device_memory=True, output_color_type=None):
            StandIn.opened.append((path, output_color_type))
            self.frames = [f.to_ndarray(format="rgb24") for f in all_frames(path)]

        def __len__(self):
            return len(self.frames)

        def get_batch_frames_by_index(self, idx):
            StandIn.asked.append(list(idx))
            return [torch.from_numpy(self.frames[i]) for i in idx]


@pytest.fixture
def stand_in(monkeypatch):
    module = types.ModuleType("PyNvVideoCodec")
    module.OutputColorType, module.SimpleDecoder = StandIn.OutputColorType, StandIn.SimpleDecoder
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", module)
    StandIn.asked, StandIn.opened = [], []
    return StandIn


def test_nvdec_path_hands_on_the_picked_frames_scaled_in_batches(real_videos, stand_in):
    path = str(real_videos["v_GGSY1Qvo990"])
    batches = []
    d = decode_nvdec(path, on_frames=batches.append, batch=8)
    cpu = decode(path)
    info, (one,) = fps_picks(path, [1.0])
    assert stand_in.opened == [(path, "rgb")] and sum(stand_in.asked, []) == one  # exactly the picks, in order
    assert [len(b) for b in batches] == [8, 8, 2] and d.n_frames == 18 and d.cpu_fallback is None
    got = np.stack(sum(batches, []))
    assert got.shape == (18, 224, 298, 3) and got.dtype == np.uint8
    # another scaler than swscale's: close to the CPU frames, not equal
    diff = np.abs(got.astype(int) - np.stack(cpu.frames).astype(int))
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 30
    np.testing.assert_array_equal(d.audio, cpu.audio)  # the audio is the CPU decode's
    assert d.duration == cpu.duration


def test_nvdec_path_keeps_frames_without_a_callback_and_serves_dense_selections(tmp_path, stand_in):
    write_video(tmp_path / "b.mp4", 6.0, size=(96, 64), fps=30, gop=15, tone=None)
    path = str(tmp_path / "b.mp4")
    dense, cpu_dense = [], []
    d = decode_nvdec(path, audio=False, short_side=64, streams=[FrameStream(24.0, 32, dense.extend, 8)])
    cpu = decode(path, audio=False, short_side=64, streams=[FrameStream(24.0, 32, cpu_dense.extend, 8)])
    assert len(d.frames) == len(cpu.frames) == d.n_frames == 6 and len(dense) == len(cpu_dense) > 100
    assert len(stand_in.opened) == 1  # one decode serves both selections
    assert np.abs(np.stack(d.frames).astype(int) - np.stack(cpu.frames).astype(int)).mean() < 6


@pytest.mark.parametrize("rotation,turns", [(-90, -1), (90, 1), (180, 2)])
def test_nvdec_path_applies_the_display_matrix(tmp_path, stand_in, rotation, turns):
    write_pattern(tmp_path / "plain.mp4")
    write_pattern(tmp_path / "turned.mp4", rotation)
    plain = decode_nvdec(str(tmp_path / "plain.mp4"), audio=False, short_side=64).frames
    turned = decode_nvdec(str(tmp_path / "turned.mp4"), audio=False, short_side=64).frames
    assert fps_picks(str(tmp_path / "turned.mp4"), [1.0])[0]["rotation"] == (-rotation) % 360
    assert len(turned) == len(plain) == 3
    for a, b in zip(turned, plain):  # short side 64 either way: no scaling; swscale's RGB conversion of a frame
        # varies by a level or two with its buffers' alignment (SIMD or not), so not bit for bit
        assert np.abs(a.astype(int) - np.rot90(b, turns).astype(int)).max() <= 4
    if rotation == -90:  # clockwise, as the phone held it: the red top is now on the right
        assert turned[0][40, -5, 0] > 200 and turned[0][40, 5, 2] > 200


def test_what_nvdec_cannot_take_goes_to_the_cpu(tmp_path, stand_in, monkeypatch):
    """A codec NVDEC lacks, or a count that disagrees: the CPU decodes it (same frames, bit for bit), and says why;
    NVDEC breaking off after frames went on is a failure of the video, never frames handed twice."""
    write_video(tmp_path / "v.mp4", 4.0, size=(96, 64), tone=None, codec="libx264")
    write_video(tmp_path / "p.mkv", 4.0, size=(96, 64), tone=None, codec="ffv1")
    for name, why in (("p.mkv", "codec ffv1"), ("v.mp4", "counts 3 frames")):
        if name == "v.mp4":
            monkeypatch.setattr(StandIn.SimpleDecoder, "__len__", lambda self: 3)
        d = decode_nvdec(str(tmp_path / name), audio=False, short_side=64)
        assert why in d.cpu_fallback
        for a, b in zip(d.frames, decode(str(tmp_path / name), audio=False, short_side=64).frames, strict=True):
            np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(StandIn.SimpleDecoder, "__len__", lambda self: len(self.frames))
    monkeypatch.setattr("pipeline.decode_nvdec.CHUNK", 2)
    calls = []

    def broken(self, idx):
        calls.append(idx)
        if len(calls) > 1:
            return []
        return [torch.from_numpy(self.frames[i]) for i in idx]
    monkeypatch.setattr(StandIn.SimpleDecoder, "get_batch_frames_by_index", broken)
    got = []
    with pytest.raises(DecodeFailure, match="NVDEC broke off mid-video"):
        decode_nvdec(str(tmp_path / "v.mp4"), audio=False, short_side=64, on_frames=got.extend, batch=1)
    assert len(got) == 2


def test_the_cpu_share_is_prepared_ahead_in_cpu_processes(real_videos, tmp_path, stand_in):
    """NVDEC sessions are threads of one process, and the picks and the audio decode hold the GIL (two threads ran
    them at 0.53x the speed of one here), so CPU processes prepare them, and the log-mel, a bounded window ahead:
    the same picks, frames and log-mel as a session preparing its own video, only the log-mel travels back, a
    video's own failure is kept as its status, and the window does not outrun the sessions."""
    import os

    from features.base import Options
    from pipeline.decode_nvdec import Prepared, prepare
    from pipeline.part import _POOLS, DecodePlan, _Ahead, decode_video

    (tmp_path / "notes.txt").write_text("not a video")
    paths = [str(p) for p in real_videos.values()] + [str(tmp_path / "notes.txt")]
    plan = DecodePlan(frames=True, clips=(), audio=True, mel=True, raw_audio=False, opts=Options(decoder="nvdec"))
    ahead = _Ahead(plan, paths, processes=2, ahead=1)
    try:
        got = ahead.get(0)
        assert ahead.submitted == 2 and sorted(ahead.futures) == [1]  # a window of 1
        pids = {p.pid for p in _POOLS[2]._processes.values()}
        assert pids and os.getpid() not in pids
        here = prepare(paths[0], [1.0], True)
        assert got.prepared.key == ((1.0,), True) and got.prepared.chosen == here.chosen
        assert got.prepared.info == here.info and got.prepared.cpu_only is None and got.prepared.failure is None
        assert got.prepared.decoded.audio is None and got.prepared.decoded.duration == here.decoded.duration
        frames, results = {}, {}
        for name, share in (("ahead", got), ("session", None)):
            frames[name] = []
            results[name] = decode_video(plan, paths[0], lambda kind, g, x, k=name: frames[k].extend(x), share)
            assert results[name].dec.n_frames == 18 and results[name].dec.cpu_fallback is None
        for a, b in zip(frames["ahead"], frames["session"], strict=True):
            np.testing.assert_array_equal(a, b)
        assert results["ahead"].dec is got.prepared.decoded  # NVDEC used what came ahead
        np.testing.assert_array_equal(results["ahead"].mel, results["session"].mel)
        assert results["ahead"].mel.shape[1] == 40 and results["ahead"].mel_error is None
        assert ahead.get(1).prepared.chosen == prepare(paths[1], [1.0], True).chosen
        res = decode_video(plan, paths[2], lambda *a: None, ahead.get(2))
        assert res.failure is not None and res.failure.status == "decode_error" and "Invalid data" in str(res.failure)
        other = Prepared(((8.0,), True))  # prepared for other selections: the session prepares its own
        assert decode_nvdec(paths[0], frames=True, audio=True, prepared=other).n_frames == 18
    finally:
        ahead.close()


def test_no_nvdec_here_says_why_and_the_run_decodes_on_the_cpu(tmp_path, capsys):
    from pipeline.extract import ExtractConfig, extract
    from pipeline.store import FeatureStore

    if unavailable() is None:
        pytest.skip("NVDEC is available here: the fallback line is not printed")
    v = tmp_path / "videos"
    v.mkdir()
    write_video(v / "a.mp4", 3.0, size=(96, 64))
    (tmp_path / "m.csv").write_text("video_id,start,end,text\na,0,2,hello\n")
    s = extract(ExtractConfig(manifest=str(tmp_path / "m.csv"), store=str(tmp_path / "s.zarr"),
                              groups=["resnet152"], random_init=["resnet152"], decoder="nvdec", workers=0,
                              precision="fp32", progress=False))
    assert "--decoder nvdec: " in capsys.readouterr().out and s["decoder"] == "pyav"
    assert FeatureStore(tmp_path / "s.zarr").groups["resnet152"]["params"]["decoder"] == "pyav"
    assert s["status"]["resnet152"] == {"ok": 1}


@pytest.mark.slow  # 12 s: three extractions
def test_a_run_with_nvdec_records_it_and_a_store_refuses_the_other_decoder(real_videos, tmp_path, stand_in,
                                                                           monkeypatch, capsys):
    """Through `pipeline extract` (the stand-in as NVDEC): the frame group records decoder nvdec, its rows are
    near the CPU decode's, the summary counts CPU fallbacks (a codec NVDEC lacks: the CPU decode's rows), and
    resuming the store with pyav is refused."""
    from pipeline.cli import print_summary
    from pipeline.extract import ExtractConfig, ExtractError, extract
    from pipeline.store import FeatureStore

    monkeypatch.setattr("pipeline.extract.nvdec_unavailable", lambda: None)
    monkeypatch.setattr("pipeline.part.unavailable", lambda: None)
    rows = []
    for i, (name, path) in enumerate(real_videos.items()):
        rows.append(f"{name},{path},0,4,clip {i}")
    write_video(tmp_path / "p.mkv", 5.0, size=(96, 64), codec="ffv1")
    rows.append(f"ffv1,{tmp_path / 'p.mkv'},0,4,clip 2")
    (tmp_path / "m.csv").write_text("video_id,path,start,end,text\n" + "\n".join(rows) + "\n")
    runs = {}
    for decoder in ("nvdec", "pyav"):
        cfg = ExtractConfig(manifest=str(tmp_path / "m.csv"), store=str(tmp_path / f"{decoder}.zarr"),
                            groups=["resnet152"], random_init=["resnet152"], decoder=decoder, workers=0,
                            precision="fp32", progress=False, allow_outside_root=True, part_size=3)
        runs[decoder] = extract(cfg)
    assert runs["nvdec"]["decoder"] == "nvdec" and runs["nvdec"]["status"]["resnet152"] == {"ok": 3}
    assert runs["nvdec"]["nvdec_prepare_processes"] >= 1  # the picks and audio were made in CPU processes
    print_summary(runs["nvdec"])
    assert "decoder nvdec; 1 videos NVDEC could not take" in capsys.readouterr().out
    a, b = FeatureStore(tmp_path / "nvdec.zarr"), FeatureStore(tmp_path / "pyav.zarr")
    assert a.groups["resnet152"]["params"]["decoder"] == "nvdec"
    x, y = (s.video_rows("resnet152", 0)() for s in (a, b))
    assert x.shape == y.shape and not np.array_equal(x, y)
    x, y = (s.video_rows("resnet152", 2)() for s in (a, b))  # ffv1: decoded by the CPU either way
    assert x.shape == (5, 2048)
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    with pytest.raises(ExtractError, match="decoder"):
        extract(ExtractConfig(manifest=str(tmp_path / "m.csv"), store=str(tmp_path / "nvdec.zarr"),
                              groups=["resnet152"], random_init=["resnet152"], decoder="pyav", workers=0,
                              precision="fp32", progress=False, allow_outside_root=True))


@pytest.mark.skipif(unavailable() is not None, reason=f"no NVDEC here: {unavailable()}")
def test_real_nvdec_picks_the_cpu_frames_and_resnet_rows_agree(real_videos):
    """On a GPU: each NVDEC frame is the CPU decode's frame at the same pick (closer to it than to the frames
    either side), and the ResNet-152 rows of both decodes agree (cosine printed)."""
    from features.base import Options
    from features.frames import ResNetFrames

    for name, path in real_videos.items():
        d = decode_nvdec(str(path), audio=False)
        cpu = decode(str(path), audio=False)
        assert d.cpu_fallback is None and len(d.frames) == len(cpu.frames)
        a, b = np.stack(d.frames).astype(np.float32), np.stack(cpu.frames).astype(np.float32)
        same = np.abs(a - b).mean(axis=(1, 2, 3))
        assert same.mean() < 4.0, same
        shifted = np.abs(a[1:] - b[:-1]).mean(axis=(1, 2, 3))
        assert (same[1:] <= shifted + 1e-3).all()
        enc = ResNetFrames("resnet152", Options(random_init=("resnet152",), device="cuda"))
        x, y = enc(np.stack(d.frames)), enc(np.stack(cpu.frames))
        cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
        print(f"{name}: NVDEC vs CPU frames mean |diff| {same.mean():.2f}, ResNet-152 cosine min {cos.min():.5f} "
              f"mean {cos.mean():.5f}")
        assert cos.min() > 0.99


def test_unavailable_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in unavailable()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)  # not installed
    assert "not installed (pip install 'mmcache[nvdec]')" in unavailable()
    monkeypatch.delitem(sys.modules, "PyNvVideoCodec")
    (tmp_path / "PyNvVideoCodec.py").write_text("raise RuntimeError('Failed to load NVENC library: "
                                                "libnvidia-encode.so.1: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # installed, but the driver has no video libraries
    assert "cannot load the driver's video libraries (RuntimeError: Failed to load NVENC" in unavailable()


def test_a_truncated_file_is_kept_as_the_cpu_decoder_keeps_it(real_videos, tmp_path, stand_in):
    data = real_videos["v_GGSY1Qvo990"].read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    try:
        cpu = decode(str(tmp_path / "cut.mp4"))
    except DecodeFailure as e:
        with pytest.raises(DecodeFailure, match=e.status):
            decode_nvdec(str(tmp_path / "cut.mp4"))
        return
    d = decode_nvdec(str(tmp_path / "cut.mp4"))
    assert cpu.truncated and d.truncated == cpu.truncated and d.n_frames == cpu.n_frames


def write_undecodable(src, path):
    """``src``'s video packets, timestamps kept, their payloads random bytes: no frame decodes."""
    rng = np.random.default_rng(0)
    with av.open(str(src)) as i, av.open(str(path), "w") as o:
        stream = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(video=0):
            if p.size:
                q = av.Packet(rng.integers(0, 256, p.size, dtype=np.uint8).tobytes())
                q.pts, q.dts, q.time_base, q.stream, q.is_keyframe = p.pts, p.dts, p.time_base, stream, p.is_keyframe
                o.mux(q)


def test_what_nvdec_cannot_take_is_decoded_whole_in_a_cpu_process(real_videos, tmp_path, stand_in, monkeypatch):
    """A codec NVDEC lacks: the CPU process that prepares it decodes it whole (the session's thread only hands its
    frames on), bit for bit the CPU decode's frames and log-mel, the reason kept; frames that never decode are the
    CPU decoder's failure; one over WHOLE_BYTES is decoded by the session itself, the same frames."""
    from features.base import Options
    from pipeline import part
    from pipeline.decode_nvdec import _CpuOnly
    from pipeline.part import DecodePlan, _Ahead, decode_video

    write_video(tmp_path / "p.mkv", 5.0, size=(96, 64), codec="ffv1")
    write_undecodable(real_videos["v_GGSY1Qvo990"], tmp_path / "noise.mkv")
    with pytest.raises(_CpuOnly, match="the first frame does not decode"):
        fps_picks(str(tmp_path / "noise.mkv"), [1.0])
    paths = [str(tmp_path / "p.mkv"), str(tmp_path / "noise.mkv")]
    plan = DecodePlan(frames=True, clips=(), audio=True, mel=True, raw_audio=False,
                      opts=Options(decoder="nvdec", short_side=64))
    cpu_plan = DecodePlan(frames=True, clips=(), audio=True, mel=True, raw_audio=False, opts=Options(short_side=64))
    cpu = []
    want = decode_video(cpu_plan, paths[0], lambda kind, g, x: cpu.extend(x))
    ahead = _Ahead(plan, paths, processes=1, ahead=1)
    try:
        share = ahead.get(0)
        assert share.whole is not None and "codec ffv1" in share.prepared.cpu_only
        got = []
        res = decode_video(plan, paths[0], lambda kind, g, x: got.extend(x), share)
        assert not stand_in.opened and res.dec.cpu_fallback == share.prepared.cpu_only and res.dec.audio is None
        assert len(got) == len(cpu) == res.dec.n_frames == 5
        for a, b in zip(got, cpu, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(res.mel, want.mel)
        res = decode_video(plan, paths[1], lambda *a: None, ahead.get(1))
        assert res.failure.status == "decode_error" and "no video frame decodes" in str(res.failure)
    finally:
        ahead.close()
    monkeypatch.setattr(part, "WHOLE_BYTES", 2 * cpu[0].nbytes)
    share = part._prepare(paths[0], [1.0], plan)
    assert share.whole is None and "codec ffv1" in share.prepared.cpu_only
    got = []
    res = decode_video(plan, paths[0], lambda kind, g, x: got.extend(x), share)
    assert "codec ffv1" in res.dec.cpu_fallback and len(got) == 5
    for a, b in zip(got, cpu, strict=True):
        np.testing.assert_array_equal(a, b)
