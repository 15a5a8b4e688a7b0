"""b1's backbones from every kind of source: a tiny random AST saved with save_pretrained, EfficientAT
weights from a .pt file (weights_only), a URL (downloaded once, converted), and the real AudioSet
weights in ../shared/models where present."""

import functools
import http.server
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

import asdcli.models.backbones as backbones
import asdcli.weights as weights
from asdcli.config import PretrainedConfig
from asdcli.errors import ConfigError
from asdcli.models.base import Batch, BranchContext
from asdcli.models.branch_pretrained import PretrainedBranch
from asdcli.models.efficientat import MobileNetAudio

CONTEXT = BranchContext(n_mels=32, frames=40, sample_rate=16000, n_groups=1, n_labels=1)
REAL = Path(__file__).resolve().parents[3] / "shared" / "models" / "efficientat-mn04-as" / "model.safetensors"


def _batch(wave: torch.Tensor, label: int = 0) -> Batch:
    n = len(wave)
    return Batch(torch.zeros(n, 32, 40), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                 torch.full((n,), label, dtype=torch.long), wave=wave)


@pytest.fixture()
def saved_ast(tmp_path):
    torch.manual_seed(0)
    model = ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               max_length=64, num_mel_bins=128))
    model.save_pretrained(tmp_path / "ast")
    ASTFeatureExtractor(max_length=64).save_pretrained(tmp_path / "ast")
    return model, tmp_path / "ast"


def test_loads_ast_weights_and_extractor_from_a_local_folder(saved_ast):
    model, folder = saved_ast
    branch = PretrainedBranch(CONTEXT, PretrainedConfig(backbone="ast", source=str(folder))).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), branch.backbone.ast.state_dict().items()):
        assert torch.equal(a, b), name
    assert branch.backbone.extractor.max_length == 64 and branch.backbone.extractor.mean == pytest.approx(-4.2677393)
    wave = torch.randn(2, 8000) * 0.1
    with torch.no_grad():
        inputs = branch.backbone.inputs(wave, 16000)
        assert inputs.shape == (2, 64, 128)
        torch.testing.assert_close(branch.embed(_batch(wave)), model.eval()(input_values=inputs).pooler_output)
        torch.testing.assert_close(branch.backbone.from_db(branch.backbone.to_db(inputs)), inputs)


def test_missing_folder_and_unreachable_hub_give_actionable_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"branches.pretrained.source: folder .*nowhere does not exist"):
        PretrainedBranch(CONTEXT, PretrainedConfig(backbone="ast", source=str(tmp_path / "nowhere")))

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(ASTModel, "from_pretrained", offline)
    with pytest.raises(ConfigError, match=r"cannot load AST weights 'MIT/ast-finetuned-audioset-10-10-0.4593'.*"
                                          r"--local-dir.*'random'"):
        PretrainedBranch(CONTEXT, PretrainedConfig(backbone="ast", source="MIT/ast-finetuned-audioset-10-10-0.4593"))


def test_an_unreachable_hub_is_one_error_without_retries(monkeypatch):
    calls = []

    def from_pretrained(location, **kwargs):
        calls.append(kwargs)
        raise OSError("not cached")

    monkeypatch.setattr(ASTModel, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.setattr(weights, "hub_reachable", lambda timeout=3.0: False)
    cfg = PretrainedConfig(backbone="ast", source="MIT/ast-finetuned-audioset-10-10-0.4593")
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache, and the Hub cannot be reached"):
        backbones.load_ast(cfg)
    assert calls == [{"local_files_only": True}]  # the cache only: no download with its retries


@pytest.fixture()
def pt_file(tmp_path):
    """A random mn04 saved as the authors publish theirs: a torch.save'd state dict."""
    torch.manual_seed(1)
    model = MobileNetAudio(0.4)
    path = tmp_path / "mn04_as_test.pt"
    torch.save({k: v for k, v in model.state_dict().items() if "frontend" not in k}, path)
    return model, path


def test_efficientat_loads_an_authors_pt_file_with_weights_only(pt_file):
    model, path = pt_file
    branch = PretrainedBranch(CONTEXT, PretrainedConfig(source=str(path))).eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(branch.backbone.model.state_dict()[name], tensor), name
    wave = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        assert branch.embed(_batch(wave)).shape == (2, 384)
        x = branch.backbone.inputs(wave, 16000)
        torch.testing.assert_close(branch.backbone.from_db(branch.backbone.to_db(x)), x)


def test_efficientat_downloads_a_url_once_and_then_works_offline(pt_file, tmp_path, monkeypatch):
    model, path = pt_file
    monkeypatch.setenv("ASD_CACHE_DIR", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    try:
        PretrainedBranch.check(PretrainedConfig(source=url))
    finally:
        server.shutdown()
        server.server_close()
    cached = tmp_path / "cache" / "models" / "mn04_as_test.safetensors"
    assert cached.is_file()
    branch = PretrainedBranch(CONTEXT, PretrainedConfig(source=url))  # the server is gone: from the cache
    assert torch.equal(branch.backbone.model.features[0][0].weight, model.features[0][0].weight)


def test_an_unreachable_url_or_an_unsafe_pickle_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ASD_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"cannot download http://127.0.0.1:9/mn.pt .*copy the file here.*--skip b1"):
        PretrainedBranch.check(PretrainedConfig(source="http://127.0.0.1:9/mn.pt"))
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"x": threading.Lock}, unsafe)
    with pytest.raises(ConfigError, match="weights_only refused it"):
        PretrainedBranch.check(PretrainedConfig(source=str(unsafe)))
    with pytest.raises(ConfigError, match="no weights file"):
        PretrainedBranch.check(PretrainedConfig(source=str(tmp_path / "none.pt")))
    small = tmp_path / "small.pt"
    torch.save(MobileNetAudio(0.5).state_dict(), small)
    with pytest.raises(ConfigError, match="does not fit an EfficientAT model of width"):
        PretrainedBranch(CONTEXT, PretrainedConfig(source=str(small)))


def test_fine_tuning_trains_the_top_blocks_with_the_margin_loss_and_keeps_pretraining_statistics(pt_file):
    cfg = PretrainedConfig(source=str(pt_file[1]), finetune_layers=2)
    branch = PretrainedBranch(CONTEXT, cfg).train()
    trainable = {n.split(".")[2] for n, p in branch.backbone.named_parameters() if p.requires_grad}
    assert trainable == {str(branch.backbone.model.blocks - 2), str(branch.backbone.model.blocks - 1)}
    assert branch.copies == 3 and branch.head.weight.shape[0] == 4  # one class: perturbed copies are the others
    before = branch.backbone.model.features[-1][1].running_mean.clone()
    loss = branch.loss(_batch(torch.randn(4, 16000) * 0.1))
    loss.backward()
    assert torch.isfinite(loss) and branch.head.weight.grad.abs().sum() > 0
    assert torch.equal(before, branch.backbone.model.features[-1][1].running_mean)
    assert set(branch.trained_kinds()) >= {"other_section", "speed_change"}
    untrained = PretrainedBranch(CONTEXT, PretrainedConfig(source="random", finetune_layers=2)).train()
    assert untrained.backbone.model.features[-1][1].training  # no pretraining statistics to keep
    frozen = PretrainedBranch(CONTEXT, PretrainedConfig(source="random"))
    assert not frozen.is_trainable() and frozen.embedding_spec() is not None and frozen.trained_kinds() == ()


def test_an_earlier_block_gives_the_embedding_and_a_block_past_the_last_is_one_error(pt_file):
    own = PretrainedBranch(CONTEXT, PretrainedConfig(source=str(pt_file[1]))).eval()
    early = PretrainedBranch(CONTEXT, PretrainedConfig(source=str(pt_file[1]), layer=4, finetune_layers=2)).eval()
    batch = _batch(torch.randn(3, 16000) * 0.1)
    x = early.backbone.inputs(batch.wave, 16000)
    with torch.no_grad():
        expected = early.backbone.model.features[:5](x).mean(dim=(2, 3))  # block 4's output, unfolded
        got = early.embed(batch)
    assert got.shape == (3, early.backbone.dim) and early.backbone.dim == expected.shape[1] != own.backbone.dim
    assert torch.allclose(got, expected, atol=1e-4)
    assert len(early.backbone.blocks()) == 5  # fine-tuning trains blocks 3 and 4, none past the one used
    trainable = {n.split(".")[2] for n, p in early.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"3", "4"}
    frozen = PretrainedBranch(CONTEXT, PretrainedConfig(source=str(pt_file[1]), layer=4))
    assert frozen.embedding_spec() != own.embedding_spec()  # its embeddings are cached apart from the last block's
    last = PretrainedBranch(CONTEXT, PretrainedConfig(source=str(pt_file[1]), layer=own.backbone.model.blocks - 1))
    assert last.embedding_spec() == own.embedding_spec()  # the last block is the model's own embedding
    with pytest.raises(ConfigError, match=r"^branches.pretrained.layer: 17 is past the last block .*\(0-16\)$"):
        PretrainedBranch.check(PretrainedConfig(source="random", layer=17))
    with pytest.raises(ValueError, match="layer applies to backbone efficientat only"):
        PretrainedConfig(backbone="ast", source="random", layer=3)


@pytest.mark.skipif(not REAL.is_file(), reason="real EfficientAT weights not present in ../shared/models")
def test_the_real_audioset_weights_load_and_tag_speech_as_speech(tmp_path):
    branch = PretrainedBranch(CONTEXT, PretrainedConfig(source=str(REAL))).eval()
    assert sum(p.numel() for p in branch.backbone.parameters()) > 900_000
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: no speech clip to tag")
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "s.wav"), "The quick brown fox jumps over the lazy dog."],
                   check=True)
    wave, rate = sf.read(str(tmp_path / "s.wav"), dtype="float32")
    with torch.no_grad():
        tags = branch.backbone.model(torch.from_numpy(np.ascontiguousarray(wave))[None], rate).logits.sigmoid()[0]
    assert int(tags.argmax()) == 0 and float(tags[0]) > 0.5  # AudioSet class 0: "Speech"
