"""Names download their weights the way the ecosystem does, tested without the internet.

A loopback HTTP server (127.0.0.1 only) started here plays (a) a minimal Hugging
Face hub holding a small random-weight HuBERT repository (``HF_ENDPOINT``;
transformers' own ``from_pretrained`` asks ``/api/models/<repo>/revision/<rev>``
and ``HEAD``/``GET /<repo>/resolve/<commit>/<file>``) and (b) a torchaudio weight
file under ``S3VIZ_TORCHAUDIO_URL``. Each load runs in a fresh Python process with
its own cache folders (``HF_HOME``, ``TORCH_HOME``), as a user's session would, and
the server logs every request, so "the second process fetched nothing" is checked
on the wire.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

REPO = "s3viz-test/tiny-hubert"
COMMITS = {"main": "a" * 40, "v2": "b" * 40}


# --------------------------------------------------------------------------- the server


class _Server:
    """Files by URL path; ``log`` holds ``(method, path)``; ``cut[path] = n`` sends only
    the first ``n`` bytes of a file while announcing its full length."""

    def __init__(self):
        self.files: dict[str, Path] = {}
        self.api: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []
        self.cut: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, body: bool):
                path = self.path.split("?")[0]
                server.log.append((self.command, path))
                if path in server.api:
                    data = server.api[path]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if body:
                        self.wfile.write(data)
                    return
                file = server.files.get(path)
                if file is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = file.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and body:
                    start = int(rng[6:].split("-")[0] or 0)
                self.send_response(206 if start else 200)
                rev = path.split("/resolve/")[1].split("/")[0] if "/resolve/" in path else None
                commit = COMMITS.get(rev, rev if rev in COMMITS.values() else None)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if body:
                    n = server.cut.get(path)
                    self.wfile.write(data[start:] if n is None else data[start:n])
                    if n is not None:
                        self.wfile.flush()
                        self.close_connection = True

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, suffix: str) -> int:
        return sum(1 for m, p in self.log if m == "GET" and p.endswith(suffix))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _tiny_hubert(seed: int):
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, conv_dim=(32, 32), conv_kernel=(10, 3),
                          conv_stride=(5, 2), num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                          conv_bias=True)
    torch.manual_seed(seed)
    return HubertModel(config).eval()


def _publish(server: _Server, folder: Path, revision: str, repo: str = REPO):
    """Serve a save_pretrained folder as revision ``revision`` of ``repo``."""
    commit = COMMITS[revision]
    names = sorted(p.name for p in folder.iterdir())
    info = json.dumps({"id": repo, "modelId": repo, "sha": commit,
                       "siblings": [{"rfilename": n} for n in names]}).encode()
    for rev in (revision, commit):
        server.api[f"/api/models/{repo}/revision/{rev}"] = info
        for n in names:
            server.files[f"/{repo}/resolve/{rev}/{n}"] = folder / n


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The server with REPO's revisions main (seed 1) and v2 (seed 2) and their folders."""
    from transformers import Wav2Vec2FeatureExtractor

    root = tmp_path_factory.mktemp("hub")
    server = _Server()
    folders = {}
    for rev, seed in (("main", 1), ("v2", 2)):
        folder = root / rev
        _tiny_hubert(seed).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
        _publish(server, folder, rev)
        folders[rev] = folder
    yield server, folders
    server.close()


_PRELUDE = """
import sys, torch, s3viz
from s3viz.upstreams import get_upstream
def outputs(up):
    torch.manual_seed(0)
    wav = torch.randn(1, 4000, 1)
    hs, _ = up(wav, torch.tensor([4000]))
    return torch.stack([h[0] for h in hs])
"""

_NO_SOCKET = """
def _audit(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        raise RuntimeError(f"network used: {event} {args}")
sys.addaudithook(_audit)
"""


def _no_socket(code: str) -> str:
    """``code`` run with an audit hook that fails on any socket connection or name lookup."""
    return _NO_SOCKET + textwrap.dedent(code)


def _run(code: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``code`` after the prelude in a fresh interpreter with ``env`` over a clean
    environment (no offline variables unless given)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("S3VIZ_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                         "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "TORCH_HOME",
                         "S3VIZ_TORCHAUDIO_URL")}
    base.update(env)
    return subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
                          env=base, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _snapshots(hf_home: Path) -> list[Path]:
    return sorted((hf_home / "hub").glob("models--*/snapshots/*/*"))


# --------------------------------------------------------------------------- Hugging Face


def test_hf_name_downloads_once_then_reuses_the_cache(hub, tmp_path):
    server, folders = hub
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf")}
    check = f"""
    from transformers import HubertModel
    up = get_upstream("hf:{REPO}")
    want = outputs(s3viz.upstreams.from_transformers(
        HubertModel.from_pretrained({str(folders['main'])!r}), normalize_waveform=True))
    assert torch.equal(outputs(up), want), "not the served weights"
    assert up.normalize is True  # the served preprocessor_config says do_normalize
    print(up.weights)
    """
    before = server.gets("model.safetensors")
    # huggingface_hub draws its bars on a terminal only; TQDM_POSITION=-1 is its switch
    # to draw them into a pipe too, so the bar shows up in the captured stderr
    first = _run(check, {**env, "TQDM_POSITION": "-1"})
    assert _ok(first).strip() == f"pretrained: hf:{REPO}@{COMMITS['main'][:12]}"
    assert server.gets("model.safetensors") == before + 1
    assert "model.safetensors" in first.stderr  # huggingface_hub's progress bar
    assert any(p.name == "model.safetensors" for p in _snapshots(tmp_path / "hf"))

    second = _run(check, env)  # a new process: the cache answers, the weights are not fetched
    assert _ok(second).strip() == f"pretrained: hf:{REPO}@{COMMITS['main'][:12]}"
    assert server.gets("model.safetensors") == before + 1

    offline = _run(_no_socket(check), {**env, "S3VIZ_OFFLINE": "1"})  # cache only
    assert _ok(offline).strip().startswith(f"pretrained: hf:{REPO}")


def test_hf_revision_picks_its_weights_and_random_control(hub, tmp_path):
    server, folders = hub
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf")}
    out = _ok(_run(f"""
    from transformers import HubertModel
    v2 = get_upstream("hf:{REPO}", revision="v2")
    main = get_upstream("hf:{REPO}")
    want = outputs(s3viz.upstreams.from_transformers(
        HubertModel.from_pretrained({str(folders['v2'])!r}), normalize_waveform=True))
    assert torch.equal(outputs(v2), want) and not torch.equal(outputs(main), want)
    ctrl = get_upstream("hf:{REPO}", pretrained=False)
    assert not torch.equal(outputs(ctrl), outputs(main))
    assert [p.shape for p in ctrl.parameters()] == [p.shape for p in main.parameters()]
    print(v2.weights); print(ctrl.weights)
    """, env)).splitlines()
    assert out[0] == f"pretrained: hf:{REPO}@{COMMITS['v2'][:12]}"
    assert out[1].startswith("random weights (seed 0")


def test_hf_random_control_fetches_the_config_only(hub, tmp_path):
    server, _ = hub
    before = server.gets("model.safetensors")
    out = _ok(_run(f'print(get_upstream("hf:{REPO}", pretrained=False).weights)',
                   {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf")}))
    assert out.startswith("random weights (seed 0")
    assert server.gets("model.safetensors") == before
    assert server.gets(f"/{REPO}/resolve/main/config.json") >= 1


@pytest.mark.parametrize("var", ["S3VIZ_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_and_not_cached_fails_fast_without_a_socket(var, tmp_path):
    env = {var: "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"),
           "HF_ENDPOINT": "http://192.0.2.1", "S3VIZ_TORCHAUDIO_URL": "http://192.0.2.1/x/"}
    out = _ok(_run(_no_socket("""
    for name in ("hf:someone/some-model", "distilhubert", "hubert", "wavlm_large"):
        try:
            get_upstream(name)
        except FileNotFoundError as err:
            print(str(err).replace(chr(10), " "))
        else:
            raise SystemExit(f"{name} loaded offline")
    """), env)).splitlines()
    # fast by construction: the audit hook fails the process on any connection or name
    # lookup, so no DNS or TCP time-out can be waited for
    assert len(out) == 4
    for message in out:
        assert var in message and "unset" in message, message
    assert str(tmp_path / "hf") in out[0] and "hf download someone/some-model" in out[0]
    assert "ntu-spml/distilhubert" in out[1]
    assert str(tmp_path / "torch") in out[2] and "hubert_fairseq_base_ls960.pth" in out[2]
    assert "http://192.0.2.1/x/wavlm_large.pth" in out[3]  # where to fetch it (a mirror)


def test_hf_download_cut_short_is_refused_and_not_cached(hub, tmp_path):
    server, _ = hub
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf")}
    paths = [p for p in server.files if p.endswith("/main/model.safetensors")
             or p.endswith(f"/{COMMITS['main']}/model.safetensors")]
    size = server.files[paths[0]].stat().st_size
    server.cut.update({p: size // 2 for p in paths})
    try:
        proc = _run(f'get_upstream("hf:{REPO}")', env)
    finally:
        for p in paths:
            server.cut.pop(p)
    assert proc.returncode != 0
    assert "OSError" in proc.stderr and REPO in proc.stderr
    assert "removed from the cache" in proc.stderr
    assert not any(p.name == "model.safetensors" for p in _snapshots(tmp_path / "hf"))
    assert not list((tmp_path / "hf").rglob("*.incomplete"))
    # the next call, with the server whole again, downloads and loads
    assert _ok(_run(f'print(get_upstream("hf:{REPO}").weights)', env)).startswith("pretrained")


def test_hf_file_that_does_not_load_is_removed(hub, tmp_path):
    server, folders = hub
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in folders["main"].iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "model.safetensors").write_bytes(b"\0" * 4096)  # same name, not a safetensors file
    saved = dict(server.files)
    _publish(server, bad, "main")
    try:
        proc = _run(f'get_upstream("hf:{REPO}")', {"HF_ENDPOINT": server.url,
                                                   "HF_HOME": str(tmp_path / "hf")})
    finally:
        server.files.clear()
        server.files.update(saved)
        _publish(server, folders["main"], "main")
    assert proc.returncode != 0 and REPO in proc.stderr
    assert "removed from the cache" in proc.stderr
    assert not _snapshots(tmp_path / "hf")


# --------------------------------------------------------------------------- torchaudio


@pytest.fixture(scope="module")
def torchaudio_file(tmp_path_factory):
    """hubert_base's torchaudio weight file, random weights (seed 3): 378 MB on disk."""
    from torchaudio.models import hubert_base

    folder = tmp_path_factory.mktemp("ta")
    torch.manual_seed(3)
    torch.save(hubert_base().state_dict(), folder / "hubert_fairseq_base_ls960.pth")
    return folder / "hubert_fairseq_base_ls960.pth"


@pytest.mark.slow
def test_torchaudio_name_downloads_with_progress_then_reuses(hub, torchaudio_file, tmp_path):
    server, _ = hub
    server.files["/ta/hubert_fairseq_base_ls960.pth"] = torchaudio_file
    env = {"S3VIZ_TORCHAUDIO_URL": server.url + "/ta", "TORCH_HOME": str(tmp_path / "torch")}
    check = f"""
    from torchaudio.models import hubert_base
    up = get_upstream("hubert")  # s3prl's name for hubert_base
    model = hubert_base()
    model.load_state_dict(torch.load({str(torchaudio_file)!r}, weights_only=True))
    want = outputs(s3viz.upstreams.TorchaudioUpstream(model.eval()))
    assert torch.equal(outputs(up), want), "not the served weights"
    print(up.weights)
    """
    first = _run(check, env)
    assert _ok(first).strip() == ("pretrained: torchaudio.pipelines.HUBERT_BASE "
                                  "(hubert_fairseq_base_ls960.pth)")
    assert server.gets("/ta/hubert_fairseq_base_ls960.pth") == 1
    assert f"downloading the pretrained weights {server.url}/ta/" in first.stderr
    assert "360M/360M" in first.stderr  # torch.hub's progress bar reached the end
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "hubert_fairseq_base_ls960.pth"
    assert cached.read_bytes() == torchaudio_file.read_bytes()
    _ok(_run(_no_socket(check), env))  # a new process, no socket at all: from the cache
    assert server.gets("/ta/hubert_fairseq_base_ls960.pth") == 1


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["cut", "garbage"])
def test_torchaudio_download_that_does_not_load_is_refused_and_not_kept(
        fault, hub, torchaudio_file, tmp_path):
    server, _ = hub
    path = "/ta/hubert_fairseq_base_ls960.pth"
    if fault == "cut":
        server.files[path] = torchaudio_file
        server.cut[path] = 1 << 20
    else:
        junk = tmp_path / "junk.pth"
        junk.write_bytes(b"<html>mirror error</html>")
        server.files[path] = junk
    env = {"S3VIZ_TORCHAUDIO_URL": server.url + "/ta", "TORCH_HOME": str(tmp_path / "torch")}
    try:
        proc = _run('get_upstream("hubert_base")', env)
    finally:
        server.cut.pop(path, None)
        server.files[path] = torchaudio_file
    assert proc.returncode != 0
    assert "hubert_fairseq_base_ls960.pth" in proc.stderr
    if fault == "garbage":
        assert "deleted from the cache" in proc.stderr
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert not folder.exists() or not list(folder.iterdir())  # no file, no .partial


def test_torchaudio_url_must_be_http(tmp_path):
    proc = _run('get_upstream("hubert_base")', {"S3VIZ_TORCHAUDIO_URL": "file:///etc/",
                                                "TORCH_HOME": str(tmp_path)})
    assert proc.returncode != 0 and "S3VIZ_TORCHAUDIO_URL" in proc.stderr
    assert "not an http(s) URL" in proc.stderr


# --------------------------------------------------------------------------- paths


def test_a_folder_means_its_own_weights(tmp_path):
    import s3viz
    from s3viz.upstreams import get_upstream

    model = _tiny_hubert(5)
    model.save_pretrained(tmp_path / "mine")
    up = get_upstream(str(tmp_path / "mine"), normalize_waveform=False)
    want = s3viz.upstreams.from_transformers(model)
    wav = torch.randn(2, 4000, 1)
    lens = torch.tensor([4000, 3000])
    for a, b in zip(up(wav, lens)[0], want(wav, lens)[0]):
        assert torch.equal(a, b)
    assert up.weights == f"pretrained: folder {tmp_path / 'mine'}"
    ctrl = get_upstream(str(tmp_path / "mine"), pretrained=False, normalize_waveform=False)
    assert ctrl.weights.startswith("random weights")
    assert not torch.equal(ctrl(wav, lens)[0][-1], want(wav, lens)[0][-1])


# --------------------------------------------------------------------------- the name table


def _doc_table() -> dict[str, list[str]]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "upstreams.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            rows[cells[0].strip("`")] = cells
    return rows


def _hf_architectures():
    """The Hugging Face rows' architectures (their repositories' config.json values)."""
    import transformers as T

    large = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
                 conv_bias=True)
    return {"distilhubert": T.HubertConfig(num_hidden_layers=2),
            "data2vec": T.Data2VecAudioConfig(),
            "wav2vec2_large_robust": T.Wav2Vec2Config(**large),
            "wav2vec2_large_voxpopuli_100k": T.Wav2Vec2Config(**large)}


def test_a_folder_without_config_json_is_refused_without_transformers(tmp_path, monkeypatch):
    """A folder that is no save_pretrained folder is named as such before transformers (an
    optional dependency) is needed: not 'pip install transformers'."""
    from s3viz.upstreams import get_upstream

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    (tmp_path / "fairseq_dump").mkdir()
    with pytest.raises(ValueError, match="folder without config.json"):
        get_upstream(str(tmp_path / "fairseq_dump"))


def test_the_docs_name_table_is_the_registry_and_its_sizes_are_counted():
    """docs/upstreams.md lists every pretrained name with s3prl's names for it, its
    checkpoint, and the float32 size of the parameters the architecture has."""
    import torchaudio.pipelines as P
    import transformers as T
    from torchaudio.models import wav2vec2_model, wavlm_model

    from s3viz.upstreams import ALIASES, PRETRAINED_MODELS

    rows = _doc_table()
    assert sorted(rows) == sorted(PRETRAINED_MODELS)
    hf = _hf_architectures()
    for name, spec in PRETRAINED_MODELS.items():
        _, s3prl_names, source, shape, size = rows[name]
        listed = {a.strip(" `") for a in s3prl_names.split(",")}
        assert {a for a, t in ALIASES.items() if t == name} <= listed, name
        assert spec.ref in source, name
        with torch.device("meta"):
            if spec.source == "torchaudio":
                bundle = getattr(P, spec.ref)
                factory = wavlm_model if bundle._model_type == "WavLM" else wav2vec2_model
                model = factory(**bundle._params)
                layers, hidden = (bundle._params["encoder_num_layers"],
                                  bundle._params["encoder_embed_dim"])
                assert bundle._path in source, name
            else:
                model = T.AutoModel.from_config(hf[name])
                layers, hidden = hf[name].num_hidden_layers, hf[name].hidden_size
        assert shape == f"{layers} x {hidden}", name
        mb = 4 * sum(p.numel() for p in model.parameters()) / 1e6
        want = f"{mb / 1000:.2f} GB" if mb >= 1000 else f"{mb:.0f} MB"
        assert size == want, (name, size, want)


# --------------------------------------------------------------------------- s3prl checkpoints


def _s3prl_checkpoint(path: Path, *, mode="default", conv=48, normalize=False, **extra):
    """A small HuBERT in s3prl's converted format, built by s3prl's own model code."""
    import dataclasses

    from s3prl.upstream.hubert.hubert_model import (HubertConfig, HubertModel,
                                                    HubertPretrainingConfig)

    mc = HubertConfig(label_rate=50.0, extractor_mode=mode, encoder_layers=2,
                      encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                      conv_feature_layers=f"[({conv}, 10, 5)] + [({conv}, 3, 2)] * 4 + "
                                          f"[({conv},2,2)] * 2",
                      conv_pos=16, conv_pos_groups=2, final_dim=16,
                      layer_norm_first=mode == "layer_norm", conv_bias=mode == "layer_norm")
    tc = HubertPretrainingConfig(label_rate=50.0, normalize=normalize)
    torch.manual_seed(7)
    model = HubertModel(mc, tc, [list("abcd")])
    cfg = {**dataclasses.asdict(mc), **extra}
    torch.save({"task_cfg": dataclasses.asdict(tc), "model_cfg": cfg,
                "model_weight": model.state_dict(), "dictionaries_symbols": [list("abcd")]}, path)
    return path


@pytest.mark.parametrize("mode,conv,normalize", [("default", 48, False),
                                                 ("layer_norm", 32, True)])
def test_an_s3prl_checkpoint_means_its_weights(mode, conv, normalize, tmp_path):
    """get_upstream(PATH) of what s3prl's hubert_local reads gives s3prl's own hidden
    states (without importing s3prl: s3viz builds it with torchaudio)."""
    pytest.importorskip("s3prl")
    import warnings

    from s3prl.nn import S3PRLUpstream

    from s3viz.upstreams import get_upstream

    path = _s3prl_checkpoint(tmp_path / "hubert.pt", mode=mode, conv=conv, normalize=normalize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = S3PRLUpstream("hubert_local", path_or_url=str(path)).eval()
    up = get_upstream(path)
    assert up.weights == f"checkpoint {path} (s3prl)" and up.normalize_waveform is normalize
    torch.manual_seed(0)
    wav = torch.randn(1, 8000) * 0.1
    with torch.no_grad():
        want, _ = ref(wav, torch.tensor([8000]))
        got, got_len = up(wav, torch.tensor([8000]))
    assert len(got) == len(want) == 3 and int(got_len[0][0]) == 24
    for g, w in zip(got, want):  # s3prl reports 25 frames, the convolutions make 24
        torch.testing.assert_close(g, w[:, :24], rtol=1e-5, atol=1e-5)
    ctrl = get_upstream(path, pretrained=False)
    assert ctrl.weights.startswith("random weights")
    assert not torch.allclose(ctrl(wav, torch.tensor([8000]))[0][-1], got[-1])


def test_s3prl_checkpoints_of_other_architectures_are_refused(tmp_path):
    pytest.importorskip("s3prl")
    from s3viz.upstreams import get_upstream

    conformer = _s3prl_checkpoint(tmp_path / "c.pt", layer_type="conformer")
    with pytest.raises(ValueError, match="layer_type='conformer'"):
        get_upstream(conformer)
    plain = tmp_path / "plain.pth"
    torch.save({"encoder.x": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match=r"architecture is unknown.*checkpoint=PATH"):
        get_upstream(str(plain))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        get_upstream(str(text))


# --------------------------------------------------------------------------- what is refused


def _without(folder: Path, out: Path, drop: str) -> Path:
    """A copy of a save_pretrained folder whose safetensors file lacks the tensors whose
    names contain ``drop``."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    for p in folder.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if drop not in k}, out / "model.safetensors",
              metadata={"format": "pt"})
    return out


def test_a_folder_missing_weights_or_asking_for_its_own_code_is_refused(hub, tmp_path):
    """transformers would leave missing parameters random and build its own class for a
    model whose config names code of its own: either would be quietly another model."""
    from s3viz.upstreams import get_upstream

    _, folders = hub
    part = _without(folders["main"], tmp_path / "part", "layers.1.feed_forward")
    with pytest.raises(ValueError, match=r"parameter\(s\) missing.*layers\.1\.feed_forward"):
        get_upstream(str(part))
    remote = tmp_path / "remote"
    _tiny_hubert(1).save_pretrained(remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_mine.MyHubert"}
    (remote / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="auto_map.*runs no code"):
        get_upstream(str(remote))
    with pytest.raises(ValueError, match="folder without config.json"):
        get_upstream("hf:..")  # as from_pretrained: a local folder of that path
    assert get_upstream("Tiny", pretrained=False).weights.startswith("random weights")


def test_hf_refusals_cost_no_weights_and_name_what_stays_cached(hub, tmp_path):
    """Missing parameters: refused and the download removed; an unsupported model type:
    refused before its weights are fetched; a cached file that does not load: refused,
    named, and left in place."""
    from transformers import BertConfig, BertModel

    server, folders = hub
    _publish(server, _without(folders["main"], tmp_path / "part", "encoder.layers.0"), "main",
             "s3viz-test/part")
    bert = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(bert)
    _publish(server, bert, "main", "s3viz-test/bert")
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf")}
    out = _ok(_run("""
    for name in ("hf:s3viz-test/part", "hf:s3viz-test/bert"):
        try:
            get_upstream(name)
        except (OSError, ValueError) as err:
            print(str(err).replace(chr(10), " "))
    """, env)).splitlines()
    assert "parameter(s) missing" in out[0] and "removed from the cache" in out[0]
    assert "'bert' model" in out[1]
    assert server.gets("/s3viz-test/bert/resolve/main/model.safetensors") == 0
    assert not [p for p in _snapshots(tmp_path / "hf") if "part" in str(p)]

    # a corrupt file already cached (the user's, or another tool's): named and left there
    _ok(_run(f'get_upstream("hf:{REPO}")', env))
    cached = [p for p in _snapshots(tmp_path / "hf") if p.name == "model.safetensors"
              and "tiny-hubert" in str(p)][0].resolve()
    cached.write_bytes(b"\0" * cached.stat().st_size)
    proc = _run(f'get_upstream("hf:{REPO}")', env)
    assert proc.returncode != 0 and "already in huggingface_hub's cache" in proc.stderr
    assert cached.exists() and cached.read_bytes() == b"\0" * cached.stat().st_size


def test_a_link_at_the_checkpoint_name_is_refused_before_downloading(hub, tmp_path,
                                                                      monkeypatch):
    from s3viz.upstreams import get_upstream

    server, _ = hub
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("S3VIZ_TORCHAUDIO_URL", server.url + "/ta")
    monkeypatch.delenv("S3VIZ_OFFLINE", raising=False)
    for target in (outside, tmp_path / "nowhere"):  # a folder, and nothing
        (folder / "hubert_fairseq_base_ls960.pth").unlink(missing_ok=True)
        (folder / "hubert_fairseq_base_ls960.pth").symlink_to(target)
        before = len(server.log)
        with pytest.raises(FileExistsError, match="not a weight file"):
            get_upstream("hubert_base")
        assert len(server.log) == before and not list(outside.iterdir())


@pytest.mark.parametrize("field,value,match", [
    ("layer_norm_first", "False", "layer_norm_first='False' is not True or False"),
    ("encoder_layers", -1, "encoder_layers=-1 is not an int >= 1"),
    ("encoder_attention_heads", 0, "encoder_attention_heads=0 is not an int >= 1"),
    ("encoder_attention_heads", 5, "not a multiple of encoder_attention_heads"),
    ("conv_feature_layers", "[(48, 10, 5)] * 10000000", "at most 64"),
    ("conv_feature_layers", "[(48, 10, 5)] * 10 ** 13", "at most 64"),
    ("conv_feature_layers", "__import__('os').getcwd()", "is not a list"),
    ("pos_conv_depth", 3, "pos_conv_depth=3"),
])
@pytest.mark.parametrize("pretrained", [True, False])
def test_an_s3prl_config_spelled_otherwise_is_refused(field, value, match, pretrained,
                                                      tmp_path):
    """A config value read the wrong way builds another model with the same shapes."""
    pytest.importorskip("s3prl")
    import re

    from s3viz.upstreams import get_upstream

    path = _s3prl_checkpoint(tmp_path / "x.pt", **{field: value})
    with pytest.raises(ValueError, match=re.escape(match)):  # (10^7 layers: never built)
        get_upstream(path, pretrained=pretrained)
