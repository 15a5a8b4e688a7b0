"""The real from_pretrained path of b1, with a tiny randomly initialised AST saved to a folder."""

import pytest
import torch
from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

from asdcli.config import PretrainedConfig
from asdcli.errors import ConfigError
from asdcli.models.base import Batch, BranchContext
from asdcli.models.branch_pretrained import PretrainedBranch

CONTEXT = BranchContext(n_mels=32, frames=40, sample_rate=16000, n_groups=1, n_labels=1)


@pytest.fixture()
def saved_ast(tmp_path):
    torch.manual_seed(0)
    model = ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               max_length=64, num_mel_bins=128))
    model.save_pretrained(tmp_path / "ast")
    ASTFeatureExtractor(max_length=64).save_pretrained(tmp_path / "ast")
    return model, tmp_path / "ast"


def test_loads_weights_and_extractor_from_a_local_folder(saved_ast):
    model, folder = saved_ast
    branch = PretrainedBranch(CONTEXT, PretrainedConfig(source=str(folder))).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), branch.ast.state_dict().items()):
        assert torch.equal(a, b), name
    assert branch.extractor.max_length == 64 and branch.extractor.mean == pytest.approx(-4.2677393)
    wave = torch.randn(2, 8000) * 0.1
    batch = Batch(torch.zeros(2, 32, 40), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                  torch.zeros(2, dtype=torch.long), wave=wave)
    with torch.no_grad():
        inputs = branch.ast_inputs(wave)
        assert inputs.shape == (2, 64, 128)
        torch.testing.assert_close(branch.embed(batch), model.eval()(input_values=inputs).pooler_output)


def test_missing_folder_and_unreachable_hub_give_actionable_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"branches.pretrained.source: folder .*nowhere does not exist"):
        PretrainedBranch(CONTEXT, PretrainedConfig(source=str(tmp_path / "nowhere")))

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(ASTModel, "from_pretrained", offline)
    with pytest.raises(ConfigError, match=r"cannot load AST weights 'MIT/ast-finetuned-audioset-10-10-0.4593'.*"
                                          r"--local-dir.*'random'"):
        PretrainedBranch(CONTEXT, PretrainedConfig())


def test_an_unreachable_hub_is_one_error_without_retries(monkeypatch):
    import asdcli.models.branch_pretrained as module

    calls = []

    def from_pretrained(location, **kwargs):
        calls.append(kwargs)
        raise OSError("not cached")

    monkeypatch.setattr(ASTModel, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.setattr(module, "hub_reachable", lambda timeout=3.0: False)
    cfg = PretrainedConfig(source="MIT/ast-finetuned-audioset-10-10-0.4593")
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache, and the Hub cannot be reached"):
        module.load_ast(cfg)
    assert calls == [{"local_files_only": True}]  # the cache only: no download with its retries
