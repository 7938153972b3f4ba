defmodule ServeEx.EngineTest do
  use ExUnit.Case, async: true

  alias ServeEx.Engine
  alias ServeEx.Test.{Paths, Safetensors}

  doctest ServeEx.Engine
  doctest ServeEx.Config
  doctest ServeEx.Reply
  doctest ServeEx.Request
  doctest ServeEx.ReplyTo
  doctest ServeEx.Pipeline.FailurePolicy
  doctest ServeEx.StreamCursor
  doctest ServeEx.Pipeline.TextSequence
  doctest ServeEx.OpenAI

  defp model(name) do
    {:ok, model} = Engine.load(Paths.golden("#{name}.safetensors"), name)
    model
  end

  defp max_diff(got_base64, want) do
    got = for <<v::float-32-little <- Base.decode64!(got_base64)>>, do: v
    assert length(got) == length(want)
    got |> Enum.zip(want) |> Enum.map(fn {a, b} -> abs(a - b) end) |> Enum.max()
  end

  test "once the engine runs, its thread count stays, and another is refused with both counts" do
    {:ok, %{"threads" => threads, "isa" => isa}} = Engine.info()
    assert isa in ["portable", "avx2", "avx512"]
    assert Engine.set_threads(threads) == :ok
    assert {:error, {:invalid_argument, message}} = Engine.set_threads(threads + 1)
    assert message =~ "cannot run the engine on #{threads + 1} threads"
    assert message =~ "it runs on #{threads}"
  end

  test "VAE decode reproduces the golden vectors" do
    v = Safetensors.read(Paths.golden("vae_tiny.golden.safetensors"))
    tol = Safetensors.tolerances(Paths.golden("vae_tiny.golden.safetensors"))
    {[_rows, width], z} = v["decode.z"]
    {shape, want} = v["decode.x"]

    [{:ok, {rows, cols, bytes}}] =
      Engine.decode_batch(model("vae_tiny"), [{Safetensors.f32_binary(z), width, :base64}])

    assert [rows, cols] == shape
    assert max_diff(bytes, want) <= tol["decode.x"]
  end

  test "WGAN generate from z reproduces the golden vectors" do
    v = Safetensors.read(Paths.golden("wgan_tiny.golden.safetensors"))
    tol = Safetensors.tolerances(Paths.golden("wgan_tiny.golden.safetensors"))
    {[_, width], z} = v["generate.z"]

    [{:ok, {_, _, bytes}}] =
      Engine.decode_batch(model("wgan_tiny"), [{Safetensors.f32_binary(z), width, :base64}])

    assert max_diff(bytes, elem(v["generate.x"], 1)) <= tol["generate.x"]
  end

  test "GPT greedy text reproduces the golden tokens, within and past the block" do
    for name <- ["gpt_tiny", "gpt_tiny_post_ln"] do
      v = Safetensors.read(Paths.golden("#{name}.golden.safetensors"))
      gpt = model(name)
      vocab = String.codepoints(gpt.config["vocab"])
      decode = fn ids -> Enum.map_join(ids, &Enum.at(vocab, &1)) end
      {_, prompt_ids} = v["prompt.ids"]
      prompt = decode.(prompt_ids)

      for key <- ["greedy_within_block.ids", "greedy_past_block.ids"] do
        {_, ids} = v[key]
        new = length(ids) - length(prompt_ids)
        assert [{:ok, text}] = Engine.generate_text_batch(gpt, [Engine.text_request(prompt, new)])
        assert text == decode.(ids), "#{name} #{key}"
      end
    end
  end

  test "the engine counts a row's multiply-adds as the sum of in x out over the layers" do
    # VAE: encoder [x+y, hidden..., 2 z] and decoder [z+y, reversed hidden..., x]; the
    # dearer of the two. WGAN: generator [z, g_hidden..., x].
    macs = fn widths ->
      widths |> Enum.chunk_every(2, 1, :discard) |> Enum.map(&Enum.product/1)
    end

    vae = model("vae_tiny")
    c = vae.config

    encoder =
      macs.([c["x_dim"] + c["n_classes"] | c["hidden"]]) ++
        [List.last(c["hidden"]) * 2 * c["z_dim"]]

    decoder = macs.([c["z_dim"] + c["n_classes"] | Enum.reverse(c["hidden"])] ++ [c["x_dim"]])
    assert vae.macs_per_row == max(Enum.sum(encoder), Enum.sum(decoder))

    wgan = model("wgan_tiny")
    g = wgan.config
    assert wgan.macs_per_row == Enum.sum(macs.([g["z_dim"] | g["g_hidden"]] ++ [g["x_dim"]]))
    assert model("gpt_tiny").macs_per_row == nil
  end

  test "a small batch runs inline, a large one on a dirty scheduler, with equal results" do
    vae = model("vae_tiny")
    limit = div(2_000_000, vae.macs_per_row)
    assert Engine.runs_inline?(vae, limit) and not Engine.runs_inline?(vae, limit + 1)
    refute Engine.runs_inline?(model("gpt_tiny"), 1)

    requests = [{3, 11, :f32}, {2, 5, :base64}, {0, 1, :f32}]

    assert ServeEx.Native.model_generate_batch_inline(vae.ref, requests) ==
             ServeEx.Native.model_generate_batch(vae.ref, requests)

    z = Safetensors.f32_binary(Enum.map(1..8, &(&1 / 4)))
    inputs = [{z, 4, :f32}, {z, 3, :base64}]

    for {inline, dirty} <- [
          {&ServeEx.Native.model_decode_batch_inline/2, &ServeEx.Native.model_decode_batch/2},
          {&ServeEx.Native.model_encode_batch_inline/2, &ServeEx.Native.model_encode_batch/2}
        ] do
      assert inline.(vae.ref, inputs) == dirty.(vae.ref, inputs)
    end
  end

  test "each request gets its own encoding: raw f32 bytes are the base64 ones decoded" do
    vae = model("vae_tiny")
    z = Safetensors.f32_binary([0.5, -1.0, 0.25, 2.0, -0.5, 1.0, 0.0, 3.0])

    [{:ok, {2, 16, base64}}, {:ok, {2, 16, raw}}] =
      Engine.generate_batch(vae, [{2, 7, :base64}, {2, 7, :f32}])

    assert raw == Base.decode64!(base64) and byte_size(raw) == 2 * 16 * 4

    [{:ok, {2, 16, decoded_b64}}, {:ok, {2, 16, decoded_raw}}] =
      Engine.decode_batch(vae, [{z, 4, :base64}, {z, 4, :f32}])

    assert decoded_raw == Base.decode64!(decoded_b64)

    [{:ok, {mu, logvar}}] = Engine.encode_batch(vae, [{Base.decode64!(base64), 16, :f32}])

    assert {2, 4, mu_bytes} = mu
    assert {2, 4, logvar_bytes} = logvar
    assert byte_size(mu_bytes) == 2 * 4 * 4 and byte_size(logvar_bytes) == 2 * 4 * 4
  end

  test "a batch keeps each request's own result and error" do
    vae = model("vae_tiny")

    [{:ok, {3, 16, _}}, {:error, {:invalid_argument, _}}, {:error, {:too_large, _}}] =
      Engine.generate_batch(vae, [{3, 1, :base64}, {0, 2, :f32}, {5000, 3, :base64}])

    [{:error, {:unknown_op, message}}] =
      Engine.generate_batch(model("gpt_tiny"), [{1, 1, :base64}])

    assert message =~ "not available for a gpt model"
  end

  test "bad model files come back as errors, not crashes" do
    dir = Path.join(System.tmp_dir!(), "serve_ex_bad_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    junk = Path.join(dir, "junk.safetensors")
    File.write!(junk, :crypto.strong_rand_bytes(300))
    assert {:error, {:bad_model, message}} = Engine.load(junk, "junk")
    assert message =~ "not a valid safetensors file"
    cut = Path.join(dir, "cut.safetensors")
    File.write!(cut, binary_part(File.read!(Paths.golden("vae_tiny.safetensors")), 0, 100))
    assert {:error, {:bad_model, _}} = Engine.load(cut, "cut")
    File.rm_rf!(dir)
  end

  test "a generation stops between tokens once its deadline passes" do
    gpt = model("gpt_tiny")
    past = System.os_time(:millisecond) - 1
    ahead = System.os_time(:millisecond) + 60_000

    assert [{:error, {:deadline_exceeded, message}}, {:ok, text}] =
             Engine.generate_text_batch(gpt, [
               Engine.text_request("hi", 5, deadline_ms: past),
               Engine.text_request("hi", 5, deadline_ms: ahead)
             ])

    assert message =~ "stopped after 0 new tokens: the deadline passed"
    assert String.length(text) == 7
  end

  describe "a decoding batch" do
    test "gives each sequence the text it gets alone, whoever joins or leaves beside it" do
      {:ok, gpt} = Engine.load(Path.join(Paths.service_models(), "gpt.safetensors"), "gpt")

      requests = [
        Engine.text_request("ROMEO:", 40, temperature: 0.9, top_k: 20, seed: 3),
        Engine.text_request(String.duplicate("To be, or not to be. ", 10), 30, seed: 4),
        Engine.text_request("A", 25, temperature: 0.5, seed: 5)
      ]

      alone = Engine.generate_text_batch(gpt, requests)
      {:ok, batch} = Engine.decoding_batch(gpt, max_sequences: 4, prefill_chunk: 16)
      [first, second, third] = requests
      {:ok, a} = Engine.join(batch, first)
      texts = run(batch, %{a => first.prompt}, 3)
      {:ok, b} = Engine.join(batch, second)
      {:ok, c} = Engine.join(batch, third)
      {:ok, cancelled} = Engine.join(batch, Engine.text_request("B", 500))
      assert Engine.batch_size(batch) == 4

      texts =
        run(
          batch,
          Map.merge(texts, %{b => second.prompt, c => third.prompt, cancelled => "B"}),
          5
        )

      assert {:ok, "B" <> _ = so_far} = Engine.leave(batch, cancelled)
      texts = run(batch, Map.delete(texts, cancelled), :all)
      assert Engine.batch_size(batch) == 0
      assert [{:ok, texts[a]}, {:ok, texts[b]}, {:ok, texts[c]}] == alone
      # "B" and a token from each of the five steps it was in (a one-token prompt is
      # prefilled in the step that gives its first token)
      assert String.length(so_far) == 6
    end

    test "refuses bad joins alone, a join past its limit, and a sequence that is not live" do
      {:ok, gpt} = Engine.load(Path.join(Paths.service_models(), "gpt.safetensors"), "gpt")
      {:ok, batch} = Engine.decoding_batch(gpt, max_sequences: 1)
      assert {:error, {:invalid_argument, _}} = Engine.join(batch, Engine.text_request("", 3))

      assert {:error, {:invalid_argument, _}} =
               Engine.join(batch, Engine.text_request("\u2603", 3))

      assert {:ok, id} = Engine.join(batch, Engine.text_request("A", 2))
      assert {:error, {:too_large, message}} = Engine.join(batch, Engine.text_request("A", 2))
      assert message =~ "max_sequences"
      assert {:ok, [{^id, _, false}]} = Engine.step(batch)
      assert {:ok, [{^id, _, true}]} = Engine.step(batch)
      assert {:error, {:invalid_argument, gone}} = Engine.leave(batch, id)
      assert gone =~ "no live sequence"
      assert {:error, {:unknown_op, _}} = Engine.decoding_batch(model("vae_tiny"))
    end
  end

  # Steps the batch `steps` times (or until it is empty, with :all), adding each new
  # piece of text to its sequence's.
  defp run(_batch, texts, 0), do: texts

  defp run(batch, texts, steps) do
    if steps == :all and Engine.batch_size(batch) == 0 do
      texts
    else
      {:ok, emitted} = Engine.step(batch)

      texts =
        Enum.reduce(emitted, texts, fn {id, text, _}, acc ->
          Map.update!(acc, id, &(&1 <> text))
        end)

      run(batch, texts, if(steps == :all, do: :all, else: steps - 1))
    end
  end

  test "a streamed generation sends its text in chunks that add up to the whole" do
    gpt = model("gpt_tiny")
    tag = make_ref()
    plain = Engine.text_request("hi", 21, temperature: 0.9, seed: 4)

    [{:ok, whole}, {:ok, streamed}] =
      Engine.generate_text_batch(gpt, [plain, %{plain | stream: {self(), tag}}])

    chunks = collect_chunks(tag, [])
    # 21 new tokens: two chunks of 8, then the last 5 before the call returns
    assert Enum.map(chunks, &String.length/1) == [8, 8, 5]
    assert streamed == whole and "hi" <> Enum.join(chunks) == whole
  end

  defp collect_chunks(tag, acc) do
    receive do
      {:stream_chunk, ^tag, text} -> collect_chunks(tag, [text | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  test "generations whose callers were killed stop between tokens and free the dirty schedulers" do
    {:ok, gpt} = Engine.load(Path.join(Paths.service_models(), "gpt.safetensors"), "gpt")
    orphans = :erlang.system_info(:dirty_cpu_schedulers)
    # as many orphans as there are dirty CPU schedulers, each streaming its chunks of
    # 8 tokens here: a run to the end sends 1024 / 8 = 128
    callers =
      for i <- 1..orphans do
        request = %{Engine.text_request("A", 1024) | stream: {self(), i}}
        spawn(fn -> Engine.generate_text_batch(gpt, [request]) end)
      end

    for i <- 1..orphans, do: assert_receive({:stream_chunk, ^i, _}, 60_000)
    Enum.each(callers, &Process.exit(&1, :kill))
    # the short call needs a dirty scheduler: it runs only once an orphan gave one up,
    # and an orphan that ran on would have sent all its chunks by then
    assert [{:ok, _}] = Engine.generate_text_batch(gpt, [Engine.text_request("A", 1)])
    chunks = for i <- 1..orphans, do: count_chunks(i, 0)
    assert Enum.all?(chunks, &(&1 < 128)), "chunks per orphan: #{inspect(chunks)}"
  end

  defp count_chunks(tag, count) do
    receive do
      {:stream_chunk, ^tag, _} -> count_chunks(tag, count + 1)
    after
      0 -> count
    end
  end
end
