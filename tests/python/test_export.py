"""Export: files match the shared manifests and config schemas, and round-trip exactly."""

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from safetensors import safe_open

from train.cli import main
from train.errors import TrainError
from train.export import export, load, read_metadata
from train.manifest import SCHEMA_DIR, evaluate, expected_shapes
from train.models.gpt import GPT, GPTConfig
from train.models.vae import VAE, VAEConfig
from train.models.wgan import WGANGP, WGANConfig


def assert_matches_schema(path: Path) -> None:
    meta = read_metadata(path)
    config = json.loads(meta["config"])
    schema = json.loads((SCHEMA_DIR / "configs" / f"{meta['arch']}.schema.json").read_text())
    jsonschema.validate(config, schema)
    assert meta["schema_version"] == "1"
    with safe_open(str(path), framework="pt") as f:
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert found == expected_shapes(meta["arch"], config)
    assert dtypes == {"F32"}


def models():
    torch.manual_seed(0)
    return [
        VAE(VAEConfig()),
        VAE(VAEConfig(hidden=(400,), likelihood="bernoulli")),
        VAE(VAEConfig(hidden=(30, 20, 10), n_classes=10)),
        WGANGP(WGANConfig()),
        WGANGP(WGANConfig(spectral_norm=True)),
        GPT(GPTConfig(vocab="abc\n", n_layer=2)),
        GPT(GPTConfig(vocab="abcé", n_layer=1, pre_ln=False)),
    ]


@pytest.mark.parametrize("model", models(), ids=lambda m: f"{m.arch}")
def test_export_matches_manifest_and_round_trips(model, tmp_path):
    path = export(model.eval(), tmp_path / "m.safetensors", {"data": "test"})
    assert_matches_schema(path)
    loaded = load(path)
    original = {k: v for k, v in model.state_dict().items() if k in loaded.state_dict()}
    for name, tensor in original.items():
        if model.arch != "wgan" or name.startswith("generator."):
            assert torch.equal(tensor, loaded.state_dict()[name]), name
    with torch.no_grad():
        if model.arch == "vae":
            z = torch.randn(3, model.cfg.z_dim)
            y = torch.tensor([1, 2, 3]) if model.cfg.n_classes else None
            assert torch.equal(model.decode(z, y), loaded.decode(z, y))
        elif model.arch == "wgan":
            z = torch.randn(3, model.cfg.z_dim)
            assert torch.equal(model.generator(z), loaded.generator(z))
        else:
            idx = torch.tensor([[0, 1, 2, 1]])
            assert torch.equal(model(idx)[0], loaded(idx)[0])


def test_gpt_tied_weights_are_stored_once(tmp_path):
    model = GPT(GPTConfig(vocab="ab", n_layer=1))
    path = export(model, tmp_path / "g.safetensors", {})
    with safe_open(str(path), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
    loaded = load(path)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    assert json.loads(read_metadata(path)["config"])["vocab"] == "ab"


def test_load_refuses_files_that_are_not_exports(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(TrainError, match="not a readable safetensors"):
        load(junk)
    path = export(VAE(VAEConfig(hidden=(8,), z_dim=2)), tmp_path / "v.safetensors", {})
    raw = path.read_bytes()
    with pytest.raises(TrainError, match="not a readable safetensors"):
        load_bytes(tmp_path, raw[: len(raw) // 2])


def load_bytes(tmp_path, data):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data)
    return load(path)


def test_manifest_expressions():
    env = {"hidden": [400, 200], "n_embd": 128, "vocab": "abc", "i": 1}
    assert evaluate("hidden[-1 - i]", env) == 400
    assert evaluate("3 * n_embd + 1", env) == 385
    assert evaluate("len(vocab) - (2 - 1)", env) == 2
    with pytest.raises(ValueError):
        evaluate("hidden[0] $ 1", env)


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "vae", "--epochs", "1", "--hidden", "32", "--n-classes", "10"],
        ["--model", "wgan", "--epochs", "1", "--spectral-norm"],
        ["--model", "gpt", "--epochs", "1", "--steps-per-epoch", "3", "--n-layer", "1", "--block-size", "16"],
    ],
    ids=["vae", "wgan", "gpt"],
)
def test_cli_trains_plots_and_exports(argv, tmp_path):
    if "gpt" in argv:
        text = tmp_path / "t.txt"
        text.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
        argv = [*argv, "--data", str(text)]
    name = argv[1]
    assert main([*argv, "--out", str(tmp_path / "a"), "--runs", str(tmp_path / "r"), "--threads", "2"]) == 0
    assert_matches_schema(tmp_path / "a" / f"{name}.safetensors")
    provenance = json.loads(read_metadata(tmp_path / "a" / f"{name}.safetensors")["provenance"])
    assert provenance["epochs"] == 1 and provenance["seed"] == 0 and "loss" in provenance["final_val"]
    run = tmp_path / "r" / name
    expected = {"loss.png", "metrics.jsonl", "checkpoint.pt", "summary.json"}
    expected |= {"samples.txt"} if name == "gpt" else {"samples.png"}
    expected |= {"recon.png"} if name == "vae" else set()
    assert expected <= {p.name for p in run.iterdir()}
    summary = json.loads((run / "summary.json").read_text())
    optimizer = {"vae": "Adam 3e-3 cosine", "wgan": "Adam (0.5, 0.9) 3e-4", "gpt": "AdamW 3e-3 cosine"}[name]
    assert summary["recipe"].startswith(optimizer) and summary["model"] == name


@pytest.mark.parametrize("name", ["vae", "wgan", "gpt", "gpt-small"])
def test_trained_artifacts_match_their_manifest(trained, name):
    assert_matches_schema(trained[name])


def tiny_gpt_run(tmp_path, data: Path, *extra: str) -> list[str]:
    return [
        "--model", "gpt", "--epochs", "1", "--steps-per-epoch", "2", "--data", str(data),
        "--out", str(tmp_path / "a"), "--runs", str(tmp_path / "r"), "--threads", "2", *extra,
    ]  # fmt: skip


def test_training_on_other_data_refuses_to_replace_an_artifact(tmp_path, capsys):
    """A second run on other data stops before training with one error line that says
    what the artifact holds and how to keep both; nothing on disk changes. --name keeps
    both; --force replaces it."""
    first, other = tmp_path / "first.txt", tmp_path / "other.txt"
    first.write_text("to be or not to be, that is the question. " * 80)
    other.write_text("all the world's a stage, and all the men and women merely players. " * 60)
    assert main(tiny_gpt_run(tmp_path, first)) == 0
    artifact = tmp_path / "a" / "gpt.safetensors"
    before = artifact.read_bytes()
    metrics = (tmp_path / "r" / "gpt" / "metrics.jsonl").read_bytes()
    capsys.readouterr()

    assert main(tiny_gpt_run(tmp_path, other)) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {artifact} holds a model trained on ") and "first.txt, 1 epochs" in line
    assert "this run trains on" in line and "other.txt" in line and "--name" in line and "--force" in line
    assert artifact.read_bytes() == before
    assert (tmp_path / "r" / "gpt" / "metrics.jsonl").read_bytes() == metrics

    assert main(tiny_gpt_run(tmp_path, other, "--name", "other-gpt")) == 0
    assert artifact.read_bytes() == before and (tmp_path / "a" / "other-gpt.safetensors").exists()
    assert main(tiny_gpt_run(tmp_path, other, "--force")) == 0
    provenance = json.loads(read_metadata(artifact)["provenance"])
    assert provenance["data"].endswith("other.txt")


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--epochs", "0", "--epochs must be at least 1, got 0"),
        ("--lr", "-1", "--lr must be at least 0, got -1.0"),
        ("--ema", "1", "--ema must be in [0, 1), got 1.0"),
        ("--fid-every", "-1", "--fid-every must be at least 0, got -1"),
        ("--fid-every", "2", "--fid-every measures image models trained on the packaged digits"),
    ],
)
def test_an_out_of_range_flag_is_one_error_line_and_changes_nothing(tmp_path, capsys, flag, value, words):
    data = tmp_path / "text.txt"
    data.write_text("to be or not to be. " * 100)
    assert main(tiny_gpt_run(tmp_path, data, flag, value)) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and words in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "r").exists()
