"""The OpenAI-compatible endpoints, end to end through a running node, driven by the
official `openai` package: a client users already have works unchanged. Texts are
compared with infer_rs called directly with the same seed, or greedy."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from serve_harness.service import Service

import infer_rs


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    queue = f"serve_ex.openai.{uuid.uuid4().hex[:8]}"
    with Service(trained["vae"].parent, queue, tmp_path_factory.mktemp("openai") / "serve_ex.log") as s:
        yield s


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{service.port}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def gpt(trained):
    return infer_rs.Model(trained["gpt"])


def test_models_lists_the_served_models(client):
    assert sorted(m.id for m in client.models.list()) == ["gpt", "gpt-small", "vae", "wgan"]


def test_a_greedy_completion_is_the_engine_text_with_its_usage(client, gpt):
    done = client.completions.create(model="gpt", prompt="ROMEO:", max_tokens=40, temperature=0)
    assert done.object == "text_completion" and done.model == "gpt" and done.id.startswith("cmpl-")
    [choice] = done.choices
    assert "ROMEO:" + choice.text == gpt.generate_text("ROMEO:", 40)
    assert (choice.index, choice.finish_reason) == (0, "length")
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (6, 40, 46)


def test_a_sampled_completion_is_the_engine_text_for_its_seed(client, gpt):
    done = client.completions.create(
        model="gpt", prompt="JULIET:", max_tokens=60, temperature=0.8, seed=11, extra_body={"top_k": 20}
    )
    expected = gpt.generate_text("JULIET:", 60, temperature=0.8, top_k=20, seed=11)
    assert "JULIET:" + done.choices[0].text == expected


def test_a_stop_string_ends_the_text_before_it(client, gpt):
    """The stop string is taken from the greedy text, from its 10th character: the
    completion is the text up to its first appearance, and usage counts the tokens
    generated, the stop string's included."""
    greedy = gpt.generate_text("ROMEO:", 200)[len("ROMEO:") :]
    stop = greedy[10:12]
    before = greedy[: greedy.index(stop)]
    done = client.completions.create(model="gpt", prompt="ROMEO:", max_tokens=200, temperature=0, stop=stop)
    assert (done.choices[0].text, done.choices[0].finish_reason) == (before, "stop")
    assert done.usage.completion_tokens == len(before) + len(stop)
    # several stop strings: the first to appear ends the text
    done = client.completions.create(
        model="gpt", prompt="ROMEO:", max_tokens=200, temperature=0, stop=["\u2603", stop]
    )
    assert done.choices[0].text == before


def test_a_streamed_completion_adds_up_to_the_engine_text(client, gpt):
    chunks = list(
        client.completions.create(
            model="gpt", prompt="ROMEO:", max_tokens=100, temperature=0.9, seed=5, stream=True
        )
    )
    assert all(c.object == "text_completion" for c in chunks) and len({c.id for c in chunks}) == 1
    reasons = [c.choices[0].finish_reason for c in chunks]
    assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
    assert len(chunks) > 2, "a 100-token text streams in several chunks"
    text = "".join(c.choices[0].text for c in chunks)
    assert "ROMEO:" + text == gpt.generate_text("ROMEO:", 100, temperature=0.9, seed=5)


def test_a_streamed_completion_stops_without_sending_any_of_the_stop_string(client, gpt):
    greedy = gpt.generate_text("ROMEO:", 300)[len("ROMEO:") :]
    stop = greedy[40:43]
    chunks = list(
        client.completions.create(
            model="gpt", prompt="ROMEO:", max_tokens=300, temperature=0, stop=[stop], stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == greedy[: greedy.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_concurrent_completions_each_get_their_lone_text(client, gpt):
    """A burst of 24 sampled completions at once, batched together: each text is, bit for
    bit, the one the engine gives its seed alone."""
    seeds = list(range(100, 124))

    def complete(seed: int) -> str:
        done = client.completions.create(model="gpt", prompt="A", max_tokens=80, temperature=1.0, seed=seed)
        return done.choices[0].text

    with ThreadPoolExecutor(len(seeds)) as pool:
        texts = list(pool.map(complete, seeds))
    for seed, text in zip(seeds, texts, strict=False):
        assert "A" + text == gpt.generate_text("A", 80, temperature=1.0, seed=seed), seed


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "gpt", "prompt": 7}, "prompt"),
        ({"model": "gpt", "prompt": "A", "max_tokens": -1}, "max_tokens"),
        ({"model": "gpt", "prompt": "A", "max_tokens": "ten"}, "max_tokens"),
        ({"model": "gpt", "prompt": "A" * 1025}, "prompt"),
        ({"model": "nope", "prompt": "A"}, "model"),
        ({"model": "gpt", "prompt": "A", "n": 2}, "n"),
        ({"model": "gpt", "prompt": "A", "temperature": 3}, "temperature"),
        ({"model": "gpt", "prompt": "A", "stop": [1]}, "stop"),
        ({"model": "gpt", "prompt": "A", "logprobs": 2}, "logprobs"),
        ({"model": "vae", "prompt": "A"}, "model"),
    ],
    ids=[
        "prompt-type",
        "negative-max-tokens",
        "max-tokens-type",
        "prompt-too-long",
        "unknown-model",
        "n",
        "temperature",
        "stop-type",
        "unsupported-field",
        "not-a-text-model",
    ],
)
def test_a_bad_request_is_a_400_with_an_openai_error_naming_the_field(service, body, param):
    request = urllib.request.Request(
        f"http://127.0.0.1:{service.port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 400
    error = json.loads(err.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_the_openai_client_raises_on_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="gpt", prompt="A", n=3)
    assert err.value.body["param"] == "n"
