import pytest

from manifests.read import ManifestError, read_manifest


def flat(m):
    """(video_id, start, end, text, clip labels) per clip, in the order read."""
    return [(m.videos.ids[c.video], float(c.start[i]), float(c.end[i]), c.text[i],
             {k: v[i] for k, v in c.labels.items()}) for c in m.clips for i in range(len(c))]


def test_howto100m_manifest_with_captions(odd_dataset):
    m = read_manifest(odd_dataset["manifest"], odd_dataset["captions"], odd_dataset["video_root"])
    ids = m.videos.ids
    assert ids == ["good0", "good1", "good2", "silent", "truncated", "empty", "gone"]
    assert {k: v[0] for k, v in m.videos.labels.items()} == {"category_1": "Food", "category_2": "Bread",
                                                             "rank": "1", "task_id": "10"}
    assert m.videos.paths[-1] is None  # kept, recorded later as 'missing'
    text = "\n".join(m.problems)
    assert "line 4: missing video_id" in text
    assert "line 9: no video file for 'gone'" in text
    assert "captions.json['good1'][1]: bad caption time" in text
    assert "no captions for video 'empty'" in text
    assert flat(m)[:3] == [("good0", 0.0, 2.0, "cut the onion", {}), ("good0", 2.0, 4.0, "knead dough", {}),
                           ("good1", 0.5, 1.5, "wheel bike", {})]


def test_strict_aborts_on_any_problem(odd_dataset):
    with pytest.raises(ManifestError, match="line 4"):
        read_manifest(odd_dataset["manifest"], odd_dataset["captions"], odd_dataset["video_root"], strict=True)


def test_clip_per_row_csv(tmp_path, odd_dataset):
    csv = tmp_path / "clips.csv"
    csv.write_text("video_id,start,end,text,task\n"
                   "good0,0,2,cut the onion,bread\n"
                   "good0,2,1,backwards,bread\n"   # line 3
                   "good1,0,abc,bad,bike\n"        # line 4
                   "good1,1,3,wheel,bike\n")
    m = read_manifest(csv, video_root=odd_dataset["video_root"])
    assert m.videos.ids == ["good0", "good1"]
    assert [(v, t, lab) for v, _, _, t, lab in flat(m)] == [("good0", "cut the onion", {"task": "bread"}),
                                                           ("good1", "wheel", {"task": "bike"})]
    assert any("line 3: bad clip time" in p for p in m.problems)
    assert any("line 4: bad clip time" in p for p in m.problems)


def test_unusable_manifests_are_clear_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "a.csv").write_text("name,x\nfoo,1\n")
    with pytest.raises(ManifestError, match="'video_id' or 'path'"):
        read_manifest(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("video_id,start,end\n")
    with pytest.raises(ManifestError, match="no usable rows"):
        read_manifest(tmp_path / "b.csv")


def test_two_files_with_one_stem_are_never_merged(tmp_path, odd_dataset):
    import shutil

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(f"{odd_dataset['video_root']}/good0.mp4", tmp_path / sub / "clip.mp4")
    rows = tmp_path / "rows.csv"
    rows.write_text("path,start,end\na/clip.mp4,0,1\nb/clip.mp4,0,1\na/clip.mp4,1,2\n")
    m = read_manifest(rows, video_root=tmp_path)
    assert m.videos.ids == ["clip"] and m.videos.paths == [str(tmp_path / "a" / "clip.mp4")]
    assert [len(c) for c in m.clips] == [2]  # b/clip.mp4's clip is not read from a/clip.mp4
    assert any("line 3: 'b/clip.mp4' and 'a/clip.mp4' (line 2) are both video 'clip'" in p for p in m.problems)
    ids = tmp_path / "ids.csv"
    ids.write_text("video_id\nclip\n")
    m = read_manifest(ids, video_root=tmp_path)  # matching ids to files: two files answer to 'clip'
    assert m.videos.paths == [None] and any("several files are video 'clip'" in p for p in m.problems)


def test_excel_bom_and_non_utf8_manifests(tmp_path, odd_dataset):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffvideo_id,task\ngood0,x\n".encode("utf-8"))
    assert read_manifest(bom, video_root=odd_dataset["video_root"]).videos.ids == ["good0"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"video_id,task\ngood0,x\n" + b"good1,cr\xe8me br\xfbl\xe9e\n" * 3000)
    with pytest.raises(ManifestError, match=r"latin.csv: not UTF-8 text after line \d+"):
        read_manifest(latin, video_root=odd_dataset["video_root"])


def test_paths_stay_under_the_video_root_and_name_media_files(tmp_path, odd_dataset):
    import shutil

    root, outside = tmp_path / "root", tmp_path / "outside.mp4"
    root.mkdir()
    shutil.copy(f"{odd_dataset['video_root']}/good0.mp4", root / "in.mp4")
    shutil.copy(f"{odd_dataset['video_root']}/good0.mp4", outside)
    rows = tmp_path / "rows.csv"
    rows.write_text("path,start,end\nin.mp4,0,1\n/etc/passwd,0,1\n../outside.mp4,0,1\nnotes.txt,0,1\n")
    m = read_manifest(rows, video_root=root)
    assert m.videos.paths == [str(root / "in.mp4"), None, None, None]
    text = "\n".join(m.problems)
    assert "'/etc/passwd' is not a video container" in text and "'notes.txt' is not a video container" in text
    assert "'../outside.mp4' is outside --video-root" in text
    m = read_manifest(rows, video_root=root, allow_outside_root=True)
    assert m.videos.paths[2] == str(root / "../outside.mp4")


def test_a_playlist_is_not_followed_to_other_files(tmp_path, real_videos):
    import shutil

    from pipeline.decode import DecodeFailure, decode

    secret = tmp_path / "elsewhere" / "secret.mp4"  # a real video the playlist points at (FFmpeg's hls would play it)
    secret.parent.mkdir()
    shutil.copy(next(iter(real_videos.values())), secret)
    evil = tmp_path / "evil.m3u8"
    evil.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{secret}\n#EXT-X-ENDLIST\n")
    with pytest.raises(DecodeFailure) as e:
        decode(str(evil))
    assert e.value.status == "decode_error"
