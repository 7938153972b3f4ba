"""The Rust engine from Python: equal to PyTorch on the same weights, errors as
infer_rs.InferError, and the GIL released while Rust computes."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import infer_rs
from train.export import load
from train.golden import GOLDEN_DIR, tolerances


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def derived_tolerance(model: torch.nn.Module, output: torch.Tensor, run) -> float:
    """The float32 reassociation bound of `output` (train/golden.py), from the model's
    longest dot product and the largest partial sum `run` forms."""
    return tolerances(model, {"out": output}, {"out": run})["out"]


def test_vae_decode_and_encode_equal_torch(trained):
    ours, ref = infer_rs.Model(trained["vae"]), load(trained["vae"])
    z = torch.randn(64, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = ref.decode(z)
        ref_mu, ref_logvar = ref.encode(x)
        recon = ref.decode(ref_mu)
    mu, logvar = ours.encode(x.numpy())
    assert max_diff(ours.decode(z.numpy()), x) <= derived_tolerance(ref, x, lambda: ref.decode(z))
    assert max_diff(mu, ref_mu) <= derived_tolerance(ref, ref_mu, lambda: ref.encode(x))
    assert max_diff(logvar, ref_logvar) <= derived_tolerance(ref, ref_logvar, lambda: ref.encode(x))
    # reconstruct = decode(encode(x)): one chain through both halves, bounded as a whole
    whole = derived_tolerance(ref, recon, lambda: ref.decode(ref.encode(x)[0]))
    assert max_diff(ours.reconstruct(x.numpy()), recon) <= whole


def test_wgan_generate_from_z_equals_torch(trained):
    z = torch.randn(100, 100, generator=torch.Generator().manual_seed(1))
    ref = load(trained["wgan"])
    with torch.no_grad():
        expected = ref.generator(z)
    tol = derived_tolerance(ref, expected, lambda: ref.generator(z))
    assert max_diff(infer_rs.Model(trained["wgan"]).decode(z.numpy()), expected) <= tol


def test_gpt_logits_and_greedy_text_equal_torch(trained):
    ours, ref = infer_rs.Model(trained["gpt"]), load(trained["gpt"])
    prompt = "ROMEO:\nWhat light through yonder window breaks?"
    with torch.no_grad():
        ref_logits, _ = ref(ref.encode(prompt)[None, :])
        ref_text = ref.decode(ref.generate(ref.encode(prompt)[None, :], 200)[0])
    assert ours.arch == "gpt" and ours.config["vocab"] == ref.cfg.vocab
    ids = ref.encode(prompt)[None, :]
    tol = derived_tolerance(ref, ref_logits[0], lambda: ref(ids))
    assert max_diff(ours.logits(prompt), ref_logits[0]) <= tol
    assert_same_greedy_text(ref, ours.generate_text(prompt, 200), ref_text, len(prompt))


def assert_same_greedy_text(ref, ours: str, expected: str, start: int) -> None:
    """Greedy texts are equal, unless they part where torch's two best logits lie within
    rounding of a tie: there either choice is a correct float32 evaluation, and the texts
    may go different ways after it."""
    if ours == expected:
        return
    split = next(i for i, (a, b) in enumerate(zip(ours, expected, strict=False)) if a != b)
    assert split >= start, "the prompt came back changed"
    ids = ref.encode(expected[:split])[None, -ref.cfg.block_size :]
    with torch.no_grad():
        logits = ref(ids)[0][0, -1]
    tol = tolerances(ref, {"logits": logits}, {"logits": lambda: ref(ids)})["logits"]
    ours_id, theirs_id = ref.encode(ours[split]), ref.encode(expected[split])
    gap = float(logits[theirs_id] - logits[ours_id])
    assert gap <= 2 * tol, f"texts part at {split}: torch prefers {expected[split]!r} by {gap} > 2 x {tol}"


def test_gpt_small_preset_runs_in_infer_rs_past_its_block(trained):
    """The gpt-small preset (6x6x384, block 256) loads through the symbolic manifest,
    and its logits and greedy text, 300 tokens so that the last ones re-prefill a slid
    window, agree with torch."""
    ours, ref = infer_rs.Model(trained["gpt-small"]), load(trained["gpt-small"])
    sizes = {k: ours.config[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
    assert sizes == {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256}
    prompt = "ROMEO:"
    ids = ref.encode(prompt)[None, :]
    with torch.no_grad():
        logits, _ = ref(ids)
        expected = ref.decode(ref.generate(ids, 300)[0])
    tol = tolerances(ref, {"logits": logits[0]}, {"logits": lambda: ref(ids)})["logits"]
    assert max_diff(ours.logits(prompt), logits[0]) <= tol
    assert_same_greedy_text(ref, ours.generate_text(prompt, 300), expected, len(prompt))


def test_gpt_greedy_text_matches_torch_on_golden_models():
    for name in ("gpt_tiny", "gpt_tiny_post_ln"):
        ref = load(GOLDEN_DIR / f"{name}.safetensors")
        ours = infer_rs.Model(GOLDEN_DIR / f"{name}.safetensors")
        prompt = "hi, bad"
        with torch.no_grad():
            expected = ref.decode(ref.generate(ref.encode(prompt)[None, :], 40)[0])
        assert_same_greedy_text(ref, ours.generate_text(prompt, 40), expected, len(prompt))


def test_generate_texts_equal_each_text_generated_alone(trained):
    """One decoding batch for prompts of every length (one past the block), greedy and
    sampled: each text equals generate_text alone for the same prompt and seed."""
    gpt = infer_rs.Model(trained["gpt"])
    block = gpt.config["block_size"]
    prompts = ["ROMEO:", "A", "To be, or not to be", "JULIET:\n" * (block // 4)]
    lengths = [1, 40, 2 * block, 7]
    for sampling in ({}, {"temperature": 0.8, "top_k": 20}):
        together = gpt.generate_texts(prompts, lengths, seeds=[3, 1, 4, 1], **sampling)
        alone = [
            gpt.generate_text(p, n, seed=s, **sampling)
            for p, n, s in zip(prompts, lengths, [3, 1, 4, 1], strict=True)
        ]
        assert together == alone, sampling
    assert gpt.generate_texts(prompts[:2], 5, seeds=[0, 0]) == [gpt.generate_text(p, 5) for p in prompts[:2]]


def test_a_decoding_batch_streams_joins_and_cancels(trained):
    """Step-wise decoding: sequences joined at different steps, one cancelled midway;
    each stream adds up to the text generated alone; bad calls raise InferError and
    leave the others going."""
    gpt = infer_rs.Model(trained["gpt"])
    batch = gpt.decoding_batch(max_sequences=3, prefill_chunk=8)
    first = batch.join("ROMEO:", 30, temperature=0.9, seed=5)
    text = {first: "ROMEO:"}
    steps = 0
    while len(batch):
        for id_, char, _finished in batch.step():
            text[id_] += char
        steps += 1
        if steps == 3:
            second = batch.join("JULIET: " * 10, 20, seed=6)
            text[second] = "JULIET: " * 10
            cancelled = batch.join("A", 50, seed=7)
            text[cancelled] = "A"
            with pytest.raises(infer_rs.InferError, match="max_sequences"):
                batch.join("A", 5)
        if steps == 3 + 15:
            assert batch.leave(cancelled) == text[cancelled]
    assert text[first] == gpt.generate_text("ROMEO:", 30, temperature=0.9, seed=5)
    assert text[second] == gpt.generate_text("JULIET: " * 10, 20, seed=6)
    assert gpt.generate_text("A", 50, seed=7).startswith(text[cancelled])
    with pytest.raises(infer_rs.InferError, match="no live sequence"):
        batch.leave(first)
    with pytest.raises(infer_rs.InferError, match="prompt is empty"):
        batch.join("", 3)
    with pytest.raises(infer_rs.InferError, match="2 seeds for 1 prompts"):
        gpt.generate_texts(["A"], 3, seeds=[1, 2])
    with pytest.raises(infer_rs.InferError, match="decoding_batch"):
        infer_rs.Model(trained["vae"]).decoding_batch()


def test_vae_generate_function(trained):
    images = infer_rs.vae_generate(str(trained["vae"]), 4, seed=3)
    assert images.shape == (4, 784) and images.dtype == np.float32
    assert np.array_equal(images, infer_rs.vae_generate(trained["vae"], 4, seed=3))
    assert images.min() >= 0 and images.max() <= 1


def test_errors_raise_infer_error(trained, tmp_path):
    assert issubclass(infer_rs.InferError, Exception)
    with pytest.raises(infer_rs.InferError, match="cannot read"):
        infer_rs.Model(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(infer_rs.InferError, match="not a valid safetensors"):
        infer_rs.vae_generate(junk, 2)
    vae = infer_rs.Model(trained["vae"])
    with pytest.raises(infer_rs.InferError, match="at least 1"):
        vae.generate(0)
    with pytest.raises(infer_rs.InferError, match="above the limit of 4096"):
        vae.generate(4097)
    with pytest.raises(infer_rs.InferError, match="width 19, the model takes width 20"):
        vae.decode(np.zeros((2, 19)))
    with pytest.raises(infer_rs.InferError, match="not available for a vae"):
        vae.generate_text("a", 3)
    with pytest.raises(infer_rs.InferError, match="not a vae|not available"):
        infer_rs.vae_generate(trained["gpt"], 2)
    gpt = infer_rs.Model(trained["gpt"])
    with pytest.raises(infer_rs.InferError, match="vocabulary"):
        gpt.generate_text("\u2603", 3)


def test_argument_errors_name_the_argument_and_the_value(trained, tmp_path):
    """What a caller passed wrong comes back as InferError naming the argument and what
    it got, not as a conversion error of the binding's plumbing."""
    vae, gpt = infer_rs.Model(trained["vae"]), infer_rs.Model(trained["gpt"])
    with pytest.raises(infer_rs.InferError, match="n must be at least 1, got -1"):
        vae.generate(-1)
    with pytest.raises(infer_rs.InferError, match="n must be at least 1, got -3"):
        infer_rs.vae_generate(trained["vae"], -3)
    with pytest.raises(infer_rs.InferError, match="max_new_tokens must be at least 1, got -5"):
        gpt.generate_text("A", -5)
    with pytest.raises(infer_rs.InferError, match=r"z must be a 2-D array \(rows, width\), got shape \[20\]"):
        vae.decode(np.zeros(20))
    with pytest.raises(infer_rs.InferError, match=r"x must be a 2-D array .* got shape \[1, 1, 784\]"):
        vae.encode(np.zeros((1, 1, 784)))
    with pytest.raises(infer_rs.InferError, match="a directory, not a .safetensors file"):
        infer_rs.Model(tmp_path)
    seed = r"a seed must be an integer from 0 to 2\^64 - 1, got "
    with pytest.raises(infer_rs.InferError, match=seed + "-3"):
        vae.generate(1, seed=-3)
    with pytest.raises(infer_rs.InferError, match=seed + "18446744073709551616"):
        gpt.generate_text("A", 3, seed=2**64)
    with pytest.raises(infer_rs.InferError, match=seed + "'x'"):
        gpt.generate_texts(["A"], 3, seeds=["x"])
    with pytest.raises(infer_rs.InferError, match="top_k must be at least 1, got -1"):
        gpt.generate_text("A", 3, top_k=-1)
    with pytest.raises(infer_rs.InferError, match="max_new_tokens must be at least 1, got -2"):
        gpt.generate_texts(["A", "B"], [3, -2])
    with pytest.raises(infer_rs.InferError, match="max_new_tokens must be at least 1, got -4"):
        gpt.decoding_batch().join("A", -4)


def test_gil_is_released_while_rust_computes(trained):
    gpt = infer_rs.Model(trained["gpt"])
    window = {}

    def work():
        window["start"] = time.perf_counter()
        gpt.generate_text("ROMEO:", 400)
        window["end"] = time.perf_counter()

    worker = threading.Thread(target=work)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    inside = sum(window["start"] < t < window["end"] for t in ticks)
    # with the GIL held for the whole call, this thread could not tick inside the window
    assert inside > 1000, f"only {inside} ticks while Rust computed"


def test_large_batches_split_over_more_threads_equal_one_thread(trained, tmp_path):
    """RAYON_NUM_THREADS=3 and 4 split batches of 64 rows and more over rayon's pool
    (more threads than this machine may have cores: that is fine); the outputs equal
    those of one thread bit for bit (each output is one chain of FMAs in a fixed order,
    whatever the split)."""
    code = (
        "import sys, numpy as np, infer_rs\n"
        "z = np.random.default_rng(0).standard_normal((300, 120), dtype=np.float32)\n"
        "vae, wgan = infer_rs.Model(sys.argv[1]), infer_rs.Model(sys.argv[2])\n"
        "np.savez(sys.argv[3], vae=vae.decode(z[:, :20]), wgan=wgan.decode(z[:, :100]))\n"
    )
    outputs = {}
    for threads in ("1", "3", "4"):
        out = tmp_path / f"{threads}.npz"
        args = [sys.executable, "-c", code, str(trained["vae"]), str(trained["wgan"]), str(out)]
        child = subprocess.run(args, env={**os.environ, "RAYON_NUM_THREADS": threads}, capture_output=True)
        assert child.returncode == 0, child.stderr
        outputs[threads] = np.load(out)
    for threads in ("3", "4"):
        for name in ("vae", "wgan"):
            np.testing.assert_array_equal(
                outputs[threads][name], outputs["1"][name], err_msg=f"{threads} {name}"
            )


def cpuinfo_fields() -> dict[str, str]:
    """The first value of each field of /proc/cpuinfo (empty off Linux)."""
    path = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_info_in_child(**env: str) -> subprocess.CompletedProcess:
    code = "import json, infer_rs; print(json.dumps(infer_rs.cpu_info()))"
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_cpu_info_names_this_machine():
    info = infer_rs.cpu_info()
    fields = cpuinfo_fields()
    if "model name" in fields:
        assert info["model_name"] == fields["model name"]
    if "vendor_id" in fields:
        assert info["vendor"] == fields["vendor_id"]
    if "flags" in fields:  # x86 Linux: the paths follow from the CPU's flags
        flags = set(fields["flags"].split())
        avx2 = {"avx2", "fma"} <= flags
        expected = ["portable"] + ["avx2"] * avx2 + ["avx512"] * (avx2 and "avx512f" in flags)
        assert info["supported_isas"] == expected
    if "INFER_RS_ISA" not in os.environ:
        assert info["isa"] == info["supported_isas"][-1]  # the best path
    threads = os.environ.get("RAYON_NUM_THREADS")
    if threads:
        assert info["threads"] == int(threads)
    else:
        assert 1 <= info["threads"] <= os.cpu_count()

    def read(d: Path, name: str) -> str:
        return (d / name).read_text().strip()

    l2 = [
        read(d, "size")
        for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")
        if read(d, "level") == "2" and read(d, "type") != "Instruction"
    ]
    if l2:  # Linux states it, e.g. "2048K"
        assert info["l2_bytes"] == int(l2[0][:-1]) << {"K": 10, "M": 20}[l2[0][-1]]
    else:
        assert info["l2_bytes"] == 512 << 10  # the engine's cautious guess


def test_cpu_info_reports_a_forced_path_and_thread_count():
    for isa in infer_rs.cpu_info()["supported_isas"]:
        child = cpu_info_in_child(INFER_RS_ISA=isa, RAYON_NUM_THREADS="3")
        assert child.returncode == 0, child.stderr
        info = json.loads(child.stdout)
        assert (info["isa"], info["threads"]) == (isa, 3)
    refusals = {"sse9": "expected one of portable, avx2, avx512"}
    for isa in {"portable", "avx2", "avx512"} - set(infer_rs.cpu_info()["supported_isas"]):
        refusals[isa] = "this CPU lacks"
    for isa, reason in refusals.items():
        child = cpu_info_in_child(INFER_RS_ISA=isa)
        assert child.returncode != 0
        assert f"InferError: INFER_RS_ISA={isa}: {reason}" in child.stderr


def test_the_stub_describes_the_module():
    """_infer_rs.pyi against the compiled module: the same public names, the same
    parameters in the same order, and a docstring on every public callable."""
    import ast
    import inspect

    from infer_rs import _infer_rs

    stub = ast.parse((Path(_infer_rs.__file__).parent / "_infer_rs.pyi").read_text())
    described = {}
    for node in stub.body:
        if isinstance(node, ast.FunctionDef):
            described[node.name] = node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            described[node.name] = node
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    described[f"{node.name}.{item.name}"] = item
    public = {name for name in dir(_infer_rs) if not name.startswith("_")}
    assert public == {name for name in described if "." not in name}
    for name, node in described.items():
        owner, _, attr = name.rpartition(".")
        obj = getattr(getattr(_infer_rs, owner), attr) if owner else getattr(_infer_rs, name)
        if attr == "__init__":
            obj = getattr(_infer_rs, owner)
        assert inspect.getdoc(obj), f"{name} has no docstring"
        is_property = any(getattr(d, "id", None) == "property" for d in getattr(node, "decorator_list", []))
        if isinstance(node, ast.FunctionDef) and not is_property:
            stub_params = [a.arg for a in node.args.args + node.args.kwonlyargs if a.arg != "self"]
            runtime = [p for p in inspect.signature(obj).parameters if p not in ("self", "$self")]
            assert stub_params == runtime, f"{name}: stub {stub_params}, module {runtime}"
