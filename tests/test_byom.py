"""Bring your own model: device / dtype / size flags, the paper's SAE folders (unet. prefix, hub
ids read from the HF cache), fail-fast checks and the tau / gamma sources (issue 11)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from saeuron_core.cli import main
from saeuron_core.errors import SaeuronError
from saeuron_core.sae import SaeConfig, TopKSae


def cli(capsys, *argv):
    code = main(["--threads", "1", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    """Exactly one error line from the CLI (progress bars of loading aside), no traceback."""
    return len([line for line in err.splitlines() if line.startswith("saeuron")]) == 1 and "Traceback" not in err


# --------------------------------------------------------------------------- device / dtype
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_line(capsys, tiny_pipeline_dir, tmp_path):
    from saeuron_core.device import resolve_device

    with pytest.raises(SaeuronError, match="--device cuda: torch .* without CUDA|sees no CUDA"):
        resolve_device("cuda")
    code, _, err = cli(
        capsys,
        "generate",
        "--model",
        str(tiny_pipeline_dir),
        "--device",
        "cuda:1",
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 2 and one_line(err) and "--device cuda:1" in err
    assert not (tmp_path / "x.png").exists()


def test_device_and_dtype_resolution(monkeypatch):
    from saeuron_core import device as dev

    assert dev.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else dev.resolve_device("auto").type)
    assert dev.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SaeuronError, match="unknown device 'gpu'"):
        dev.resolve_device("gpu")
    cpu = torch.device("cpu")
    assert dev.resolve_dtype("auto", cpu) == torch.float32
    assert dev.resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(SaeuronError, match="unknown dtype 'float8'"):
        dev.resolve_dtype("float8", cpu)
    # a CPU build without half-precision kernels: float32 with a warning, not a crash later
    monkeypatch.setattr(dev, "_runs_unet_ops", lambda device_type, dtype: False)
    with pytest.warns(UserWarning, match="float16 is not supported on cpu.*using float32"):
        assert dev.resolve_dtype("float16", cpu) == torch.float32
    err = dev.explain_dtype_failure(RuntimeError("\"slow_conv2d_cpu\" not implemented for 'Half'"), cpu, torch.float16)
    assert err is not None and "use --dtype float32" in str(err)


def _random_sae(d_in=32, n=128, k=8, seed=0, **cfg):
    torch.manual_seed(seed)
    sae = TopKSae(SaeConfig(d_in=d_in, num_latents=n, k=k, **cfg))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def test_sae_math_in_bfloat16_matches_float32():
    """A bfloat16 model's block output, edited through the SAE, equals the float32 edit of the
    same (bfloat16-rounded) input up to bfloat16 rounding of the result; a bfloat16 SAE encodes
    like its float32 original (arithmetic in float32)."""
    from saeuron_core.hooks import Step
    from saeuron_core.interventions import PointEditor, ScaleFeatures

    sae = _random_sae()
    x = torch.randn(2, 32, 4, 4).bfloat16()
    step = Step(999, 0)
    features = ScaleFeatures(tuple(range(0, 128, 3)), 0.0)
    edited_bf16 = PointEditor("p", sae, [features], None)(x, step)
    edited_fp32 = PointEditor("p", sae, [features], None)(x.float(), step)
    assert edited_bf16.dtype == torch.bfloat16
    change = (edited_fp32 - x.float()).abs().max()
    assert change > 0.1  # the edit does something
    # the result is rounded to bfloat16 once: relative error <= 2**-9 (8 significant bits)
    assert torch.allclose(edited_bf16.float(), edited_fp32, atol=1e-6, rtol=2**-8)

    half_sae = _random_sae().to(torch.bfloat16)
    ref = TopKSae(sae.cfg)
    ref.load_state_dict({k: v.float() for k, v in half_sae.state_dict().items()})
    tokens = torch.randn(64, 32)
    got, want = half_sae.encode(tokens), ref.encode(tokens)
    assert got.top_acts.dtype == torch.float32
    assert torch.equal(got.top_indices.sort(-1).values, want.top_indices.sort(-1).values)
    assert torch.allclose(got.top_acts.sort(-1).values, want.top_acts.sort(-1).values, atol=1e-5)


def test_bfloat16_pipeline_generates_with_an_ablation(tiny_pipeline_dir):
    from saeuron_core.hooks import block_channels
    from saeuron_core.interventions import ScaleFeatures, apply_interventions
    from saeuron_core.pipeline import generate, load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir), "cpu", "bfloat16")
    point = "up_blocks.1.attentions.1"
    sae = _random_sae(d_in=block_channels(pipe.unet, point), n=64, k=4)
    plain = generate(pipe, "a star", [0], 2, 4.0, output_type="np")[0]
    with apply_interventions(pipe.unet, {point: sae}, [ScaleFeatures(tuple(range(64)), 0.0)]):
        ablated = generate(pipe, "a star", [0], 2, 4.0, output_type="np")[0]
    assert pipe.unet.dtype == torch.bfloat16 and sae.dtype == torch.float32
    assert abs(ablated - plain).max() > 0


# --------------------------------------------------------------------------- size
def test_height_width_checked_and_used(capsys, tiny_pipeline_dir, tmp_path):
    from PIL import Image

    from saeuron_core.pipeline import load_pipeline, size_multiple

    pipe = load_pipeline(str(tiny_pipeline_dir))
    assert size_multiple(pipe) == 8  # VAE factor 2 x 2**(3 levels - 1)
    code, _, err = cli(
        capsys,
        "generate",
        "--model",
        str(tiny_pipeline_dir),
        "--height",
        "20",
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 2 and "height 20 must be a positive multiple of 8" in err and one_line(err)
    code, out, _ = cli(
        capsys,
        "generate",
        "--model",
        str(tiny_pipeline_dir),
        "--height",
        "24",
        "--width",
        "32",
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "y.png"),
    )
    assert code == 0 and "24x32 px" in out
    assert Image.open(tmp_path / "y.png").size == (32, 24)


# --------------------------------------------------------------------------- SAE configs
def _write_sae(folder, cfg_fields, d_in=32, n=64):
    sae = _random_sae(d_in=d_in, n=n, k=4)
    sae.save(folder)
    raw = json.loads((folder / "cfg.json").read_text())
    raw.update(cfg_fields)
    for key in [k for k, v in cfg_fields.items() if v is None]:
        raw.pop(key)
    (folder / "cfg.json").write_text(json.dumps(raw))
    return folder


def test_paper_cfg_fields(tmp_path):
    with pytest.raises(SaeuronError, match="does not say k"):
        TopKSae.load(_write_sae(tmp_path / "nok", {"k": None}))
    with pytest.raises(
        SaeuronError, match="sample_topk=True is not supported: it selects the top k latents per whole image"
    ):
        TopKSae.load(_write_sae(tmp_path / "sample", {"sample_topk": True}))
    paper = TopKSae.load(
        _write_sae(
            tmp_path / "paper",
            {"batch_topk": True, "multi_topk": False, "input_unit_norm": False, "expansion_factor": 4},
        )
    )
    assert paper.cfg.inference_topk() == "per-token TopK, k=4 (trained with BatchTopK)"


def test_input_unit_norm_is_honoured(tmp_path):
    from saeuron_core.hooks import Step
    from saeuron_core.interventions import PointEditor, ScaleFeatures

    sae = TopKSae.load(_write_sae(tmp_path / "norm", {"input_unit_norm": True}))
    x = torch.randn(10, 32) * 5 + 2
    mean, std = x.mean(-1, keepdim=True), (x - x.mean(-1, keepdim=True)).std(-1, keepdim=True) + 1e-5
    xn = (x - mean) / std
    pre = torch.relu(xn @ sae.encoder.weight.T + sae.encoder.bias - sae.b_dec @ sae.encoder.weight.T)
    top = pre.topk(4, -1)
    enc = sae.encode(x)
    assert torch.allclose(enc.top_acts.sort(-1).values, top.values.sort(-1).values, atol=1e-5)
    dense = torch.zeros(10, 64).scatter(-1, top.indices, top.values)
    recon = (dense @ sae.W_dec + sae.b_dec) * std + mean
    assert torch.allclose(sae.decode(*enc, x), recon, atol=1e-4)
    # ablating latent i removes z_i * W_dec[i] in the block's own units (times the token's std)
    feature = int(top.indices[0, 0])
    x_map = x.reshape(1, 10, 32, 1).permute(0, 2, 1, 3)  # [1, C, 10, 1]
    out = PointEditor("p", sae, [ScaleFeatures((feature,), 0.0)], None)(x_map, Step(1, 0))
    want = x - dense[:, feature : feature + 1] * sae.W_dec[feature] * std
    assert torch.allclose(out.permute(0, 2, 3, 1).reshape(10, 32), want, atol=1e-4)
    with pytest.raises(SaeuronError, match="training an SAE with input_unit_norm is not implemented"):
        sae(x)


# --------------------------------------------------------------------------- paper folders and hub ids
def _paper_layout(tiny_bundle, dest):
    """The bundle's SAEs renamed the way the paper's release names them: unet.<point>."""
    for folder in (
        p for p in (tiny_bundle / "sae").iterdir() if not p.name.startswith(".")
    ):  # .train holds training state
        shutil.copytree(folder, dest / f"unet.{folder.name}", ignore=shutil.ignore_patterns("train_state.pt"))
    return dest


def _hf_cache(tmp_path, repo, files_root, subfolder):
    """A Hugging Face hub cache (models--org--name/{blobs,refs,snapshots}) holding ``files_root``
    under ``subfolder``, laid out as huggingface_hub writes it (snapshot files link to blobs)."""
    cache = tmp_path / "hf-cache"
    storage = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    (storage / "blobs").mkdir()
    for path in sorted(files_root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = storage / "snapshots" / commit / subfolder / path.relative_to(files_root)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(blob)
    return cache


def test_paper_layout_and_hub_id_load_offline(capsys, tiny_bundle, tmp_path, monkeypatch):
    from saeuron_core.pipeline import load_pipeline, model_info
    from saeuron_core.unlearning import SaeBundle

    paper = _paper_layout(tiny_bundle, tmp_path / "paper")
    cache = _hf_cache(tmp_path, "someone/saeuron-saes", paper, "sd15")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    pipe = load_pipeline(str(tiny_bundle / "model"))
    info = model_info(pipe, str(tiny_bundle / "model"))
    for source in (paper, "someone/saeuron-saes/sd15"):
        bundle = SaeBundle.load(info, source, tiny_bundle / "stats", tiny_bundle / "defaults.json")
        assert sorted(bundle.saes) == sorted(set(info.hook_points.values()))
        bundle.check_fits(pipe.unet)
    # statistics computed straight from the paper-layout folder and from the hub id
    store = tiny_bundle / "store"
    point = info.hook_points["style"]
    code, out, _ = cli(
        capsys,
        "stats",
        "--store",
        str(store),
        "--sae",
        "someone/saeuron-saes/sd15",
        "--point",
        f"unet.{point}",
        "--top-m",
        "1",
        "--no-thumbnails",
        "--out",
        str(tmp_path / "stats"),
    )
    assert code == 0 and (tmp_path / "stats" / point / "stats.json").is_file(), out
    # not cached while offline: one clear line
    code, _, err = cli(
        capsys, "stats", "--store", str(store), "--sae", "someone/other-saes", "--out", str(tmp_path / "s2")
    )
    assert code == 2 and "not in the Hugging Face cache" in err and "offline" in err and one_line(err)
    # cached repo without the asked hook point
    with pytest.raises(SaeuronError, match="no SAE for hook point.*mid_block.attentions.0"):
        from saeuron_core.hub import resolve_sae_dir

        resolve_sae_dir("someone/saeuron-saes/sd15", ["mid_block.attentions.0"])


def test_unlearn_with_paper_saes_and_sources(capsys, tiny_bundle, tmp_path):
    paper = _paper_layout(tiny_bundle, tmp_path / "paper")
    model, stats = tiny_bundle / "model", tiny_bundle / "stats"
    common = [
        "unlearn",
        "--model",
        str(model),
        "--sae",
        str(paper),
        "--stats",
        str(stats),
        "--steps",
        "2",
        "--prompt",
        "a star",
    ]
    # a foreign model gets no bundled table: a clear line, nothing generated
    code, _, err = cli(capsys, *common, "--concept", "dots", "--out", str(tmp_path / "a.png"))
    assert code == 2 and "no default tau/gamma for 'dots' in none" in err and not (tmp_path / "a.png").exists()
    code, out, _ = cli(capsys, *common, "--concept", "dots", "--preset", "paper", "--out", str(tmp_path / "b.png"))
    assert (
        code == 0
        and "dots: tau/gamma from preset paper" in out
        and "per-token TopK, k=4 (trained with per-token TopK)" in out
    )
    code, out, _ = cli(
        capsys,
        *common,
        "--concept",
        "star",
        "--defaults",
        str(tiny_bundle / "defaults.json"),
        "--out",
        str(tmp_path / "c.png"),
    )
    assert code == 0 and f"star: tau/gamma from table {tiny_bundle / 'defaults.json'}" in out


def test_paper_preset_matches_names_by_kind(tiny_bundle):
    from saeuron_core.pipeline import ModelInfo
    from saeuron_core.unlearning import PRESETS, SaeBundle

    # hook points spelled the paper's way (unet. prefix) name the same blocks
    info = ModelInfo(
        "elsewhere", 16, {"object": "unet.up_blocks.1.attentions.0", "style": "unet.up_blocks.1.attentions.1"}
    )
    bundle = SaeBundle.load(info, tiny_bundle / "sae", tiny_bundle / "stats", preset="paper")
    assert sorted(bundle.saes) == ["up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
    assert bundle.default_params("rings") == (99.999, -1.0)  # every style
    with pytest.raises(SaeuronError, match="no default tau/gamma for 'star'"):
        bundle.default_params("star")  # not a Table 4 object
    bundle.defaults = {
        **PRESETS["paper"],
        "concepts": {**PRESETS["paper"]["concepts"], "Star": {"tau": 99.995, "gamma": -5.0, "kind": "object"}},
    }
    assert bundle.default_params("star") == (99.995, -5.0)  # names match case-insensitively


def test_sae_that_does_not_fit_fails_before_generating(capsys, tiny_bundle, tmp_path):
    wrong = tmp_path / "wrong"
    for folder in (
        p for p in (tiny_bundle / "sae").iterdir() if not p.name.startswith(".")
    ):  # .train holds training state
        sae = TopKSae.load(folder)
        _write_sae(wrong / folder.name, {}, d_in=sae.d_in + 8, n=sae.num_latents)
    code, _, err = cli(
        capsys,
        "unlearn",
        "--model",
        str(tiny_bundle / "model"),
        "--sae",
        str(wrong),
        "--stats",
        str(tiny_bundle / "stats"),
        "--concept",
        "dots",
        "--tau",
        "99",
        "--gamma",
        "-5",
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 2 and "d_in=" in err and "outputs 32 channels" in err and one_line(err)
    assert not (tmp_path / "x.png").exists()


def test_zerogpu_moves_the_session_to_cuda_inside_gpu_calls(monkeypatch):
    """On a ZeroGPU Space, each GPU-decorated call first moves the registered session to CUDA
    (a GPU exists only inside such calls); elsewhere ``gpu`` returns the function unchanged."""
    import sys
    import types

    from explorer import zerogpu

    def plain(x):
        return x + 1

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert zerogpu.gpu(plain) is plain

    decorated = []
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=lambda fn: decorated.append(fn) or fn))
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    monkeypatch.setattr(zerogpu, "_ON_GPU", [])
    moves = []
    session = types.SimpleNamespace(to_device=moves.append)
    zerogpu.place_on_gpu(session)
    zerogpu.place_on_gpu(session)  # registered once

    def stream(n):
        yield from range(n)

    on_gpu, on_gpu_stream = zerogpu.gpu(plain), zerogpu.gpu(stream)
    assert len(decorated) == 2 and moves == []  # nothing moves at decoration time
    assert on_gpu(1) == 2 and moves == ["cuda"]
    assert list(on_gpu_stream(3)) == [0, 1, 2] and moves == ["cuda", "cuda"]
