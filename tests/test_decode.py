from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.decode import SAMPLE_RATE, DecodeFailure, decode
from pipeline.demo import write_video


def scaled(frame, width, height):
    """One frame through ffmpeg's scale filter (bicubic) and an rgb24 conversion, as the CLI recipe does."""
    graph = av.filter.Graph()
    chain = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name, time_base=frame.time_base),
             graph.add("scale", f"{width}:{height}"), graph.add("format", "pix_fmts=rgb24"), graph.add("buffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    graph.push(frame)
    return graph.pull().to_ndarray()


def frames_by_rule(path, short_side=224):
    """Independent reference: every frame decoded, frame k = last frame with time < k + 0.5 s."""
    with av.open(str(path)) as c:
        frames = [(float(f.pts * f.time_base), f) for f in c.decode(video=0)]
        duration = float(c.streams.video[0].duration * c.streams.video[0].time_base)
    picked = []
    for k in range(int(round(duration))):
        before = [f for t, f in frames if t < k + 0.5]
        if before:
            f = before[-1]
            picked.append(scaled(f, int(f.width * short_side / f.height), short_side))  # long side truncated
    return picked


@pytest.mark.parametrize("name,n_frames,seconds,width", [("v_GGSY1Qvo990", 18, 18.16, 298),
                                                          ("v_ZNVhz7ctTq0", 14, 14.05, 298)])
def test_real_videos_one_frame_per_second_and_16k_audio(real_videos, name, n_frames, seconds, width):
    d = decode(str(real_videos[name]))
    assert len(d.frames) == n_frames  # what ffmpeg fps=1 gives (spec: 18 and 14)
    assert d.frames[0].shape == (224, width, 3) and d.frames[0].dtype == np.uint8
    assert abs(len(d.audio) / SAMPLE_RATE - seconds) < 0.05
    assert d.audio.dtype == np.float32 and 0.1 < np.abs(d.audio).max() < 2.0  # AAC may overshoot 1.0


def test_frames_are_the_ones_the_fps_rule_picks(real_videos):
    path = real_videos["v_GGSY1Qvo990"]
    ours = decode(str(path), audio=False).frames
    ref = frames_by_rule(path)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


def write_vfr(path, times):
    """mpeg4 (an older codec too) 64x48 frames at ``times`` (seconds), each flat grey of its own level."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 4 % 255, np.uint8), format="rgb24")
            f.pts, f.time_base = int(t * 1000), Fraction(1, 1000)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def test_variable_frame_rate(tmp_path):
    path = tmp_path / "vfr.mp4"
    write_vfr(path, np.cumsum(np.r_[0, np.random.default_rng(0).uniform(0.02, 0.3, 60)]))  # irregular gaps
    d = decode(str(path), audio=False, short_side=48)
    ref = frames_by_rule(path, 48)
    assert len(d.frames) == len(ref) > 5
    for a, b in zip(d.frames, ref):
        np.testing.assert_array_equal(a, b)


def test_no_audio_track_is_reported_not_raised(tmp_path):
    write_video(tmp_path / "silent.mp4", 3.0, tone=None, size=(64, 48))
    d = decode(str(tmp_path / "silent.mp4"))
    assert len(d.frames) == 3 and d.audio is None and d.audio_error == "no audio track"


def test_audio_only_decode_skips_video(tmp_path):
    write_video(tmp_path / "a.mp4", 2.0, tone=1000.0, size=(64, 48))
    d = decode(str(tmp_path / "a.mp4"), frames=False)
    assert d.frames == [] and abs(len(d.audio) - 2 * SAMPLE_RATE) < 2048
    spectrum = np.abs(np.fft.rfft(d.audio[4000:20000]))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / 16000 - 1000) < 5  # the tone survives resampling


@pytest.mark.parametrize("content,status", [(None, "missing"), (b"", "decode_error"),
                                            (b"not a video at all" * 100, "decode_error")])
def test_unreadable_files(tmp_path, content, status):
    path = tmp_path / "x.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DecodeFailure) as e:
        decode(str(path))
    assert e.value.status == status and e.value.message


def test_truncated_file_fails_with_a_status(tmp_path):
    write_video(tmp_path / "full.mp4", 6.0, size=(64, 48))
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeFailure) as e:
        decode(str(tmp_path / "cut.mp4"))
    assert e.value.status == "decode_error"


def test_truncated_download_keeps_the_decodable_part(real_videos, tmp_path):
    full = decode(str(real_videos["v_GGSY1Qvo990"]))
    data = real_videos["v_GGSY1Qvo990"].read_bytes()  # moov first (as YouTube serves): the head decodes
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    d = decode(str(tmp_path / "cut.mp4"))
    assert d.truncated and d.truncated.startswith("truncated: decoded 9.0 s of 18.0 s")
    assert d.n_frames == len(d.frames) == 9 and 8.5 < d.duration <= 9.3
    for a, b in zip(d.frames[:-1], full.frames):  # the same frames as the whole file gives, up to the break
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(d.audio[:16000 * 8], full.audio[:16000 * 8])
    assert decode(str(real_videos["v_GGSY1Qvo990"])).truncated is None


def write_pattern(path, rotation=None, n=12):
    """96x64 frames, red top half, blue bottom half, with a display matrix rotating ``rotation`` degrees
    counter-clockwise (as av_display_rotation_set; phones write -90 for a portrait recording)."""
    img = np.zeros((64, 96, 3), np.uint8)
    img[:32, :, 0] = 255
    img[32:, :, 2] = 255
    img[:, :8] = 128  # and a grey left edge
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=4)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


@pytest.mark.parametrize("rotation,turns", [(-90, -1), (90, 1), (180, 2)])
def test_display_matrix_is_applied_as_the_ffmpeg_cli_does(tmp_path, rotation, turns):
    write_pattern(tmp_path / "plain.mp4")
    write_pattern(tmp_path / "turned.mp4", rotation)
    plain = decode(str(tmp_path / "plain.mp4"), audio=False, short_side=64).frames
    turned = decode(str(tmp_path / "turned.mp4"), audio=False, short_side=64).frames
    assert len(turned) == len(plain) == 3
    for a, b in zip(turned, plain):  # short side 64 either way: no scaling, so the pixels are exact
        np.testing.assert_array_equal(a, np.rot90(b, turns))
    if rotation == -90:  # clockwise, as the phone held it: the red top is now on the right
        assert turned[0][40, -5, 0] > 200 and turned[0][40, 5, 2] > 200


def test_frames_stream_to_the_extractor_in_batches(tmp_path):
    """A long video never has all its frames in RAM: they reach ``on_frames`` ``batch`` at a time, and the
    decoding process's peak RSS stays flat (1200 frames at 224x224 held would be 180 MB)."""
    import json
    import subprocess
    import sys

    path = tmp_path / "long.mp4"
    with av.open(str(path), "w") as out:  # 20 minutes at 1 fps, 64x64
        s = out.add_stream("mpeg4", rate=1)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(1200):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i % 251, np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    script = f"""
import json, re
from pipeline.decode import decode
hwm = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
before, sizes, shapes = hwm(), [], set()
d = decode({str(path)!r}, audio=False, on_frames=lambda b: (sizes.append(len(b)), shapes.add(b[0].shape)), batch=16)
print(json.dumps(dict(grew_mb=hwm() - before, n=d.n_frames, kept=len(d.frames), sizes=sizes, shapes=list(shapes))))
"""
    r = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert r["n"] == sum(r["sizes"]) == 1200 and r["kept"] == 0 and max(r["sizes"]) == 16
    assert r["shapes"] == [[224, 224, 3]]
    assert r["grew_mb"] < 40, r


@pytest.mark.parametrize("name", ["v_GGSY1Qvo990", "v_ZNVhz7ctTq0"])
def test_ffmpeg_cli_decoder_gives_the_same_frames_and_audio_bit_for_bit(real_videos, name):
    """--decoder ffmpeg runs the HowTo100M recipe (ffmpeg -vf fps=1,scale=W:H -pix_fmt rgb24) through
    ffmpeg-python; the in-process decoder runs the same filters, so the frames are identical."""
    from pipeline.decode_ffmpeg import decode_ffmpeg

    ours, cli = decode(str(real_videos[name])), decode_ffmpeg(str(real_videos[name]))
    assert len(ours.frames) == len(cli.frames) == cli.n_frames > 10
    for a, b in zip(ours.frames, cli.frames):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ours.audio, cli.audio)
    streamed = []
    decode_ffmpeg(str(real_videos[name]), audio=False, on_frames=streamed.append, batch=4)
    assert [len(b) for b in streamed[:-1]] == [4] * (len(streamed) - 1) and sum(map(len, streamed)) == len(cli.frames)


def test_ffmpeg_cli_decoder_statuses(tmp_path, real_videos):
    from pipeline.decode_ffmpeg import decode_ffmpeg

    with pytest.raises(DecodeFailure, match="no such file"):
        decode_ffmpeg(str(tmp_path / "nope.mp4"))
    data = real_videos["v_GGSY1Qvo990"].read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    d = decode_ffmpeg(str(tmp_path / "cut.mp4"))
    assert d.truncated and d.truncated.startswith("truncated: decoded") and 8 <= d.n_frames <= 10
    write_video(tmp_path / "silent.mp4", 3.0, tone=None, size=(64, 48))
    d = decode_ffmpeg(str(tmp_path / "silent.mp4"))
    assert d.n_frames == 3 and d.audio is None and d.audio_error == "no audio track"


def _same_frames(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["v_GGSY1Qvo990", "v_ZNVhz7ctTq0"])
def test_unused_packets_are_skipped_and_the_frames_are_identical(real_videos, tmp_path, name):
    """A real encode looped to 10 copies (a keyframe every 2-3 s, as YouTube's): the packets after a GOP's last
    picked frame are never decoded (a fifth of them), and every frame and sample equals a full decode's."""
    from pipeline.demo import loop_video

    path = tmp_path / f"{name}.mp4"
    loop_video(real_videos[name], path, 10)
    full, fast = decode(str(path), skip_unused=False), decode(str(path))
    _same_frames(fast.frames, full.frames)
    np.testing.assert_array_equal(fast.audio, full.audio)
    with av.open(str(path)) as c:
        packets = c.streams.video[0].frames
    assert full.skipped == 0 and 0.15 < fast.skipped / packets < 0.3, (fast.skipped, packets)
    assert len(fast.frames) == round(full.duration) >= 140


def test_skipping_is_exact_with_b_frames_and_dense_clip_streams(tmp_path):
    """x264 with B-frames (reordered decode) and a keyframe every 15 frames, a 1 fps selection and a 24 fps
    dense one from the same decode (3D groups): identical frames either way; nothing of the dense one is lost."""
    from pipeline.decode import FrameStream

    path = tmp_path / "b.mp4"
    write_video(path, 12.0, size=(96, 64), fps=30, gop=15)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.profile == "High"  # B-frames on

    def run(skip):
        dense = []
        d = decode(str(path), audio=False, short_side=64, skip_unused=skip,
                   streams=[FrameStream(24.0, 32, dense.extend, 8)])
        return d, dense

    (full, full_dense), (fast, fast_dense) = run(False), run(True)
    _same_frames(fast.frames, full.frames)
    _same_frames(fast_dense, full_dense)
    assert len(full_dense) > 250 and full.skipped == 0
    one = decode(str(path), audio=False, short_side=64)
    _same_frames(one.frames, full.frames)
    # 1 fps alone skips the tail of every GOP after its picked frame; at 24 fps from 30 nearly all are needed
    assert one.skipped > 60 and 0 < fast.skipped < 20


def test_skipping_stays_off_where_it_cannot_be_exact(tmp_path):
    """mpeg4 has no IDR marker to rely on: every packet is decoded."""
    write_video(tmp_path / "m.mp4", 4.0, size=(64, 48), codec="mpeg4")
    d = decode(str(tmp_path / "m.mp4"), audio=False)
    assert d.skipped == 0 and len(d.frames) == 4
