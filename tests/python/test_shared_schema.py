"""The wire format and golden vectors of shared_schema/."""

import base64
import json

import jsonschema
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from train.golden import CASES, GOLDEN_DIR, U, reassociation_tolerance, write
from train.manifest import SCHEMA_DIR

WIRE = SCHEMA_DIR / "wire"
REQUEST = json.loads((WIRE / "request.schema.json").read_text())
REPLY = json.loads((WIRE / "reply.schema.json").read_text())
ERRORS = json.loads((WIRE / "errors.json").read_text())
LIMITS = json.loads((WIRE / "limits.json").read_text())
EXAMPLES = json.loads((SCHEMA_DIR / "examples" / "requests.json").read_text())["examples"]


def test_schemas_are_valid_json_schemas():
    for path in [
        *SCHEMA_DIR.glob("configs/*.json"),
        WIRE / "request.schema.json",
        WIRE / "reply.schema.json",
    ]:
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e["name"])
def test_example_validates_as_labelled(example):
    assert example["expect"] == "ok" or example["expect"] in ERRORS["codes"]
    if "raw" in example:
        # bytes no schema can judge: not JSON at all, or JSON the wire format refuses
        # before any schema applies (a repeated key, nesting deeper than any request)
        assert example["expect"] == "malformed_request"
        return
    valid = jsonschema.Draft202012Validator(REQUEST).is_valid(example["body"])
    assert valid == example["schema_valid"]


def test_examples_cover_every_request_error_code():
    # overloaded, deadline_exceeded and internal depend on the service's state and the
    # request's headers, not on its body
    produced_by_requests = set(ERRORS["codes"]) - {"overloaded", "deadline_exceeded", "internal"}
    assert produced_by_requests <= {e["expect"] for e in EXAMPLES}


def test_schema_limits_equal_limits_json():
    then = {c["if"]["properties"]["op"]["const"]: c["then"]["properties"] for c in REQUEST["allOf"]}
    assert then["generate"]["n"]["maximum"] == LIMITS["max_n"]
    assert then["decode"]["z"]["maxItems"] == LIMITS["max_z_rows"]
    assert then["encode"]["x"]["maxItems"] == LIMITS["max_x_rows"]
    assert then["generate_text"]["prompt"]["maxLength"] == LIMITS["max_prompt_chars"]
    assert then["generate_text"]["max_new_tokens"]["maximum"] == LIMITS["max_new_tokens"]
    assert then["generate_text"]["temperature"]["maximum"] == LIMITS["max_temperature"]
    assert REQUEST["$defs"]["seed"]["maximum"] == LIMITS["max_seed"]
    assert set(REQUEST["properties"]["op"]["enum"]) == {op for ops in ERRORS["ops"].values() for op in ops}


def test_every_float64_a_client_prints_fits_the_number_limit():
    # Python (like every shortest-round-trip printer) writes a float64 in at most 17
    # significant digits: a sign, 17 digits, a point and a 5-character exponent make 24.
    extremes = [-2.2250738585072014e-308, -1.7976931348623157e308, -5e-324, -0.1234567890123456789]
    rng = np.random.default_rng(0)
    sampled = rng.standard_normal(10_000) * 10.0 ** rng.integers(-300, 300, 10_000)
    longest = max(len(json.dumps(float(x))) for x in [*extremes, *sampled])
    assert longest == 24 <= LIMITS["max_number_chars"]


def test_replies_validate():
    image = np.arange(6, dtype="<f4").reshape(2, 3)
    ok = {
        "v": 1,
        "ok": True,
        "shape": [2, 3],
        "dtype": "f32",
        "data": base64.b64encode(image.tobytes()).decode(),
    }
    jsonschema.validate(ok, REPLY)
    decoded = np.frombuffer(base64.b64decode(ok["data"]), dtype="<f4").reshape(ok["shape"])
    np.testing.assert_array_equal(decoded, image)
    jsonschema.validate(
        {"v": 1, "ok": True, "text": "ROMEO: hi", "finish_reason": "stop", "new_tokens": 5}, REPLY
    )
    for ending in ({"finish_reason": "length"}, {"error": {"code": "internal", "message": "m"}, "ok": False}):
        jsonschema.validate({"v": 1, "ok": True, "seq": 3, "done": True, **ending}, REPLY)
    # a text reply says why it ended
    assert not jsonschema.Draft202012Validator(REPLY).is_valid({"v": 1, "ok": True, "text": "ROMEO: hi"})
    for code in ERRORS["codes"]:
        jsonschema.validate({"v": 1, "ok": False, "error": {"code": code, "message": "m"}}, REPLY)
    bad = {"v": 1, "ok": False, "error": {"code": "oops", "message": "m"}}
    assert not jsonschema.Draft202012Validator(REPLY).is_valid(bad)


def test_golden_vectors_reproduce_from_their_generator(tmp_path):
    """A fresh run of train/golden.py gives the stored files on any CPU. Weights and inputs
    come from torch's normal sampler (Box-Muller: a log, a cosine and a square root, each
    within an ulp or two), so they agree to 8 ulps; outputs agree within the reassociation
    tolerance stored beside them; token ids and tolerances' keys agree exactly."""
    write(tmp_path)
    for name in CASES:
        for suffix in (".safetensors", ".golden.safetensors"):
            path = GOLDEN_DIR / f"{name}{suffix}"
            stored, fresh = load_file(path), load_file(tmp_path / f"{name}{suffix}")
            tolerance = json.loads(safe_open(path, "pt").metadata().get("tolerance", "{}"))
            assert stored.keys() == fresh.keys(), name
            for key, value in stored.items():
                what = f"{name} {key}"
                if key in tolerance:
                    torch.testing.assert_close(fresh[key], value, rtol=0, atol=tolerance[key], msg=what)
                elif value.is_floating_point():
                    torch.testing.assert_close(fresh[key], value, rtol=8 * U, atol=0, msg=what)
                else:
                    assert torch.equal(fresh[key], value), f"{name} {key}"
        if suffix == ".golden.safetensors":
            stored_meta = safe_open(path, "pt").metadata()
            fresh_meta = safe_open(tmp_path / f"{name}{suffix}", "pt").metadata()
            assert json.loads(fresh_meta["tolerance"]).keys() == tolerance.keys(), name
            assert fresh_meta.get("greedy_past_block.text") == stored_meta.get("greedy_past_block.text"), name


def test_reassociation_tolerance_bounds_a_reordered_sum():
    """The bound holds where it can be checked exactly: a float32 sum of n terms taken
    forwards and backwards differs by at most 2 gamma_n sum|terms|."""
    gen = torch.Generator().manual_seed(0)
    for n in (16, 128, 1024):
        terms = torch.randn(200, n, generator=gen)
        forward = terms.clone()
        backward = terms.flip(1)
        s_f = torch.zeros(200)
        s_b = torch.zeros(200)
        for j in range(n):
            s_f += forward[:, j]
            s_b += backward[:, j]
        magnitude = terms.abs().sum(1)
        bound = torch.tensor([reassociation_tolerance(n, float(m)) for m in magnitude])
        assert bool(((s_f - s_b).abs() <= bound).all()), n
