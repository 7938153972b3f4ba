"""--device, --precision and --compile: parsing and clean errors, on a machine without CUDA."""

import pytest
import torch

from train.bench import gpu_check
from train.cli import main, parse_args, runtime_config
from train.errors import TrainError
from train.runtime import RuntimeConfig, autocast_dtype, resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_runtime_flags_parse():
    args = parse_args(["--model", "vae", "--device", "cuda:1", "--precision", "bf16", "--compile"])
    assert runtime_config(args) == RuntimeConfig(device="cuda:1", precision="bf16", compile=True)
    assert runtime_config(parse_args(["--model", "gpt"])) == RuntimeConfig()


def test_auto_picks_the_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_one_error_line(spec, no_cuda, capsys):
    assert main(["--model", "vae", "--device", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "CUDA is not available" in err[0]


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cpu:0", ""])
def test_a_bad_device_string_is_one_error_line(spec, capsys):
    with pytest.raises(TrainError):
        resolve_device(spec)
    assert main(["--model", "vae", "--device", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device")


def test_bf16_on_the_cpu_stays_fp32(capsys):
    assert autocast_dtype("bf16", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    assert autocast_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    # a bad size stops the run right after the runtime is settled
    argv = ["--model", "vae", "--device", "cpu", "--precision", "bf16", "--z-dim", "0"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "training on cpu stays fp32" in out and err.startswith("error: bad vae settings")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vae", "--n-layer", "2"], "error: --n-layer is a gpt setting"),
        (["--model", "wgan", "--steps-per-epoch", "5"], "error: --model wgan makes passes over the images"),
        (
            ["--model", "gpt", "--batch-size", "0"],
            "error: bad trainer settings: --batch-size must be at least",
        ),
    ],
    ids=["foreign-flag", "steps-for-images", "batch-size"],
)
def test_settings_that_do_not_fit_the_model_are_one_error_line(argv, message, capsys):
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_the_gpu_check_without_a_gpu_is_one_error_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device; `make gpu-check` measures it")
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the GPU check needs a CUDA GPU")
    assert gpu_check.main(["--device", "cpu"]) == 2


def test_gpu_check_rows_compare_with_the_reference():
    summary = {"train_seconds": 10.0, "epochs": 30, "steps": 1000, "final_val": {"loss": 1.44}}
    summary |= {"train_config": {"batch_size": 64}, "model_config": {"block_size": 256, "n_critic": 5}}
    rows = {c.name: gpu_check.row(c, summary) for c in gpu_check.CHECKS}
    assert "13,500 samples/s (39%, missed (goal 90%))" in rows["vae"]  # 30 x 4,500 / 10 s
    assert "1,638,400 tokens/s (161%, met)" in rows["gpt-small"]  # 1,000 x 64 x 256 / 10 s
    assert "(goal <= 1.45: met)" in rows["gpt-small"]
    assert "20.0 G steps/s" in rows["wgan"]
