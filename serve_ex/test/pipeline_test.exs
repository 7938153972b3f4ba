defmodule ServeEx.PipelineTest do
  @moduledoc "The pipeline with a fake AMQP client: replies, acks, batching, failure policy, restarts."
  use ExUnit.Case, async: false
  @moduletag :capture_log

  alias ServeEx.{Config, Connection, Engine, Metrics, ModelRegistry}
  alias ServeEx.AMQP.Fake
  alias ServeEx.Test.Paths

  # a broker-generated name, as a client's exclusive reply queue has
  @reply_queue "amq.gen-Y2xpZW50LXJlcGx5LXF1ZQ"

  setup do
    start_supervised!({ModelRegistry, {Paths.service_models(), 0}})
    url = Fake.url(self())

    config = %{
      Config.from_env(%{"BATCH_SIZE" => "64", "BATCH_TIMEOUT_MS" => "30", "PROCESSORS" => "2"})
      | amqp_url: url,
        amqp: Fake
    }

    start_supervised!({Connection, url: url, queue: config.request_queue, amqp: Fake})

    start_supervised!(
      {Connection,
       url: url, queue: config.request_queue, name: ServeEx.ReplyConnection, amqp: Fake},
      id: :reply_connection
    )

    start_supervised!({ServeEx.Pipeline.Supervisor, config})
    assert_receive {:consume, producer, chan, "serve_ex.requests", 128}, 2_000
    on_exit(fn -> ServeEx.Status.set_draining(false) end)
    %{producer: producer, url: url, chan: chan}
  end

  defp deliver(producer, body, tag, opts \\ []) do
    meta = %{
      delivery_tag: tag,
      redelivered: Keyword.get(opts, :redelivered, false),
      reply_to: Keyword.get(opts, :reply_to, @reply_queue),
      correlation_id: "c#{tag}",
      deadline: Keyword.get(opts, :deadline)
    }

    send(producer, {:fake_deliver, body, meta})
  end

  defp reply_for(tag) do
    cid = "c#{tag}"
    assert_receive {:published, @reply_queue, body, ^cid}, 2_000
    :jsx.decode(body, [:return_maps])
  end

  test "a valid request is answered, then acked", %{producer: producer} do
    deliver(producer, ~s({"v": 1, "model": "vae", "op": "generate", "n": 2, "seed": 5}), 1)
    reply = reply_for(1)
    assert reply["ok"] and reply["shape"] == [2, 784]
    assert_receive {:ack, 1}

    {:ok, vae} = ModelRegistry.lookup("vae")
    [{:ok, {2, 784, direct}}] = Engine.generate_batch(vae, [{2, 5, :base64}])
    assert reply["data"] == direct
  end

  test "a request for f32 gets the raw bytes, with the shape beside them", %{producer: producer} do
    deliver(
      producer,
      ~s({"v": 1, "model": "vae", "op": "generate", "n": 2, "seed": 5, "encoding": "f32"}),
      9
    )

    assert_receive {:published, @reply_queue, {:f32, {2, 784}, ["data"], bytes}, "c9"}, 2_000
    assert_receive {:ack, 9}

    {:ok, vae} = ModelRegistry.lookup("vae")
    [{:ok, {2, 784, direct}}] = Engine.generate_batch(vae, [{2, 5, :base64}])
    assert bytes == Base.decode64!(direct)
  end

  test "an invalid request gets an error reply and is acked, not requeued", %{producer: producer} do
    deliver(producer, ~s({"v": 1, "model": "vae", "op": "generate", "n": 0}), 2)
    assert %{"ok" => false, "error" => %{"code" => "invalid_argument"}} = reply_for(2)
    assert_receive {:ack, 2}
    refute_received {:reject, 2, _}
  end

  test "requests arriving together share one engine call", %{producer: producer} do
    %{sum: before_sum, buckets: before} = Metrics.value(:serve_ex_batch_rows, [])
    # the batcher holds still until all five wait in its mailbox, so they arrive
    # together whatever the machine's speed
    batcher = GenServer.whereis(batcher("wgan"))
    :sys.suspend(batcher)

    for tag <- 10..14,
        do: deliver(producer, ~s({"v": 1, "model": "wgan", "op": "generate", "n": 3}), tag)

    wait_until(fn -> Process.info(batcher, :message_queue_len) == {:message_queue_len, 5} end)
    :sys.resume(batcher)
    for tag <- 10..14, do: assert(%{"ok" => true, "shape" => [3, 784]} = reply_for(tag))

    %{sum: sum, buckets: buckets} = Metrics.value(:serve_ex_batch_rows, [])
    assert sum - before_sum == 15
    # all 15 rows landed in one observation: the bucket for 9 to 16 rows counted it
    assert Enum.at(buckets, 4) == Enum.at(before, 4) + 1
  end

  test "a request whose handling fails is requeued once, then dead-lettered with a reply",
       %{producer: producer} do
    start_broken_model("broken", :vae, 1)
    fails_twice(producer, ~s({"v": 1, "model": "broken", "op": "generate", "n": 1}), 20)
  end

  # A model whose handle the engine does not know, so that every call on it raises,
  # served by a batcher of its own.
  defp start_broken_model(id, arch, batch_size) do
    broken = %Engine{id: id, ref: make_ref(), arch: arch, config: %{}}
    :persistent_term.put({ModelRegistry, :models}, Map.put(ModelRegistry.models(), id, broken))

    start_supervised!(
      {ServeEx.Pipeline.Batcher, model: broken, batch_size: batch_size, batch_timeout_ms: 1},
      id: {:broken, id}
    )
  end

  # A request whose handling fails on both deliveries (tags `tag` and `tag + 1`): requeued
  # once without a reply, then answered `internal` and dead-lettered. Returns that reply.
  defp fails_twice(producer, body, tag) do
    {first_cid, retry} = {"c#{tag}", tag + 1}
    deliver(producer, body, tag)
    assert_receive {:reject, ^tag, true}, 2_000
    refute_received {:published, _, _, ^first_cid}

    deliver(producer, body, retry, redelivered: true)
    reply = reply_for(retry)
    assert %{"ok" => false, "error" => %{"code" => "internal"}} = reply
    assert_receive {:reject, ^retry, false}
    reply
  end

  test "a request that crashes its batch fails alone; the batch's other requests are answered",
       %{producer: producer, chan: chan} do
    decode = fn v ->
      ~s({"v": 1, "model": "vae", "op": "decode", "z": [[#{Enum.join(List.duplicate(v, 20), ",")}]]})
    end

    # the batcher holds still until all three wait in its mailbox: one batch
    batcher = GenServer.whereis(batcher("vae"))
    :sys.suspend(batcher)
    deliver(producer, decode.("0.25"), 130)
    deliver(producer, decode.("0.75"), 132)
    wait_until(fn -> Process.info(batcher, :message_queue_len) == {:message_queue_len, 2} end)
    # a request no processor would pass (a value that is not a number), standing for a
    # bug upstream: encoding its rows for the engine raises, for the whole batch
    {:ok, request} = ServeEx.Request.parse(decode.("0.5"), &ModelRegistry.lookup/1)

    guilty = %ServeEx.Message{
      payload: decode.("0.5"),
      reply_to: @reply_queue,
      correlation_id: "c131",
      acknowledger: {ServeEx.Pipeline.ReplyPublisher, {Fake, chan}, 131},
      redelivered: false,
      received_at: System.monotonic_time(:microsecond),
      request: put_in(request.args.rows, [[:not_a_number | List.duplicate(0.5, 19)]]),
      model_id: "vae"
    }

    :ok = ServeEx.Admission.admit({"vae", :images}, 1)
    ServeEx.Pipeline.Batcher.add(guilty)
    :sys.resume(batcher)

    {:ok, vae} = ModelRegistry.lookup("vae")

    for {tag, v} <- [{130, 0.25}, {132, 0.75}] do
      row = for _ <- 1..20, into: <<>>, do: <<v::float-32-little>>
      [{:ok, {1, 784, direct}}] = Engine.decode_batch(vae, [{row, 20, :base64}])
      assert %{"ok" => true, "data" => ^direct} = reply_for(tag)
      assert_receive {:ack, ^tag}
    end

    # the guilty one alone failed: requeued once, without a reply
    assert_receive {:reject, 131, true}, 2_000
    refute_received {:published, _, _, "c131"}
  end

  test "a message without reply_to is dead-lettered", %{producer: producer} do
    deliver(producer, ~s({"v": 1, "model": "vae", "op": "generate", "n": 1}), 30, reply_to: nil)
    assert_receive {:reject, 30, false}, 2_000
  end

  test "killing a batcher restarts the pipeline and the consumer", %{producer: producer} do
    [{batcher, _}] = Registry.lookup(ServeEx.Pipeline.Registry, {:batcher, "vae"})
    Process.exit(batcher, :kill)
    assert_receive {:consume, new_producer, _chan, _queue, _prefetch}, 2_000
    assert new_producer != producer
    deliver(new_producer, ~s({"v": 1, "model": "vae", "op": "generate", "n": 1}), 40)
    assert %{"ok" => true} = reply_for(40)
  end

  test "a reply_to that is not an accepted name gets no publish and is dead-lettered",
       %{producer: producer} do
    body = ~s({"v": 1, "model": "vae", "op": "generate", "n": 1})

    for {name, tag} <- [
          {"amq.rabbitmq.reply-to.AAAA.BBBB", 50},
          {"serve_ex.requests", 51},
          {"serve_ex.dead", 52}
        ] do
      deliver(producer, body, tag, reply_to: name)
      assert_receive {:reject, ^tag, false}, 2_000
      refute_received {:published, ^name, _, _}
    end
  end

  test "an unroutable reply is acked and counted, not dropped silently or recomputed",
       %{producer: producer, url: url} do
    gone = "amq.gen-" <> String.duplicate("g", 22)
    Fake.set(url, :unroutable, [gone])
    before = unroutable_count()
    deliver(producer, ~s({"v": 1, "model": "vae", "op": "generate", "n": 1}), 60, reply_to: gone)
    assert_receive {:published, ^gone, _, "c60"}, 2_000
    assert_receive {:ack, 60}, 2_000
    assert unroutable_count() == before + 1
  end

  defp unroutable_count, do: Metrics.value(:serve_ex_requests_total, ["vae", "unroutable"])

  test "a reply the broker refuses is dead-lettered, never computed again",
       %{producer: producer, url: url} do
    refused = "amq.gen-" <> String.duplicate("r", 22)
    Fake.set(url, :refused, [refused])

    deliver(producer, ~s({"v": 1, "model": "vae", "op": "generate", "n": 1}), 70,
      reply_to: refused
    )

    assert_receive {:published, ^refused, _, "c70"}, 2_000
    assert_receive {:reject, 70, false}, 2_000
    refute_receive {:published, ^refused, _, "c70"}, 200
  end

  # The demo GPT under another id, served by a text scheduler whose engine has a bug
  # planted: a prompt starting with POISON crashes every step it is in, and its lone run.
  defp start_poisoned_gpt do
    {:ok, gpt} = ModelRegistry.lookup("gpt")
    poisoned = %{gpt | id: "poisoned_gpt"}

    :persistent_term.put(
      {ModelRegistry, :models},
      Map.put(ModelRegistry.models(), "poisoned_gpt", poisoned)
    )

    for lane <- [:short, :long] do
      start_supervised!(
        {ServeEx.Pipeline.TextScheduler,
         model: poisoned, lane: lane, max_sequences: 8, engine: ServeEx.Test.PoisonedEngine},
        id: {:poisoned_gpt, lane}
      )
    end

    gpt
  end

  defp text_body(model, prompt, max_new_tokens, extra \\ "") do
    ~s({"v": 1, "model": "#{model}", "op": "generate_text", "prompt": "#{prompt}", "max_new_tokens": #{max_new_tokens}#{extra}})
  end

  test "a streamed request whose engine call fails ends with an error, never mid-stream",
       %{producer: producer} do
    # the step raises, so the scheduler runs the text again alone; that fails too:
    # requeued once, then an error reply without a sequence number, which a client
    # reads as the stream's last frame
    start_poisoned_gpt()

    reply =
      fails_twice(producer, text_body("poisoned_gpt", "POISON", 4, ~s(, "stream": true)), 96)

    refute Map.has_key?(reply, "seq")
    refute_receive {:published, _, _, "c97"}, 100
  end

  test "a step that crashes fails only the guilty sequence; the others get their lone text",
       %{producer: producer} do
    gpt = start_poisoned_gpt()
    scheduler = GenServer.whereis(scheduler("poisoned_gpt", :short))
    # all three join the same batch: the scheduler holds still until they wait for it
    :sys.suspend(scheduler)

    deliver(
      producer,
      text_body("poisoned_gpt", "ROMEO:", 30, ~s(, "seed": 1, "temperature": 0.9)),
      150
    )

    deliver(producer, text_body("poisoned_gpt", "POISON", 30), 151)

    deliver(
      producer,
      text_body(
        "poisoned_gpt",
        "JULIET:",
        30,
        ~s(, "stream": true, "seed": 2, "temperature": 0.9)
      ),
      152
    )

    wait_until(fn -> Process.info(scheduler, :message_queue_len) == {:message_queue_len, 3} end)
    :sys.resume(scheduler)

    [{:ok, romeo}, {:ok, juliet}] =
      Engine.generate_text_batch(gpt, [
        Engine.text_request("ROMEO:", 30, seed: 1, temperature: 0.9),
        Engine.text_request("JULIET:", 30, seed: 2, temperature: 0.9)
      ])

    assert %{"ok" => true, "text" => ^romeo, "finish_reason" => "length"} = reply_for(150)
    frames = stream_frames(152, [])
    assert "JULIET:" <> Enum.map_join(frames, &Map.get(&1, "delta", "")) == juliet
    assert Enum.map(frames, & &1["seq"]) == Enum.to_list(0..(length(frames) - 1))
    assert_receive {:reject, 151, true}, 2_000
    refute_received {:published, _, _, "c151"}
  end

  test "a stream whose deadline passes mid-generation ends with a numbered error frame",
       %{producer: producer} do
    # 1,024 new tokens take a long while (each token past the 128-token block re-prefills
    # it), the first chunk of 8 a few milliseconds: a deadline at a quarter of the whole,
    # timed on this machine, falls between the two
    {:ok, gpt} = ModelRegistry.lookup("gpt")
    long = Engine.text_request("A", 1024)
    {full_us, [{:ok, _}]} = :timer.tc(fn -> Engine.generate_text_batch(gpt, [long]) end)

    body =
      ~s({"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A", "max_new_tokens": 1024, "stream": true})

    deliver(producer, body, 120, deadline: System.os_time(:millisecond) + div(full_us, 4000))
    frames = stream_frames(120, [])
    {chunks, [last]} = Enum.split(frames, -1)

    assert chunks != [], "the deadline passed before the first chunk"
    assert Enum.map(frames, & &1["seq"]) == Enum.to_list(0..length(chunks))
    assert %{"done" => true, "ok" => false, "error" => %{"code" => "deadline_exceeded"}} = last
    assert last["error"]["message"] =~ ~r/stopped after \d+ new tokens: the deadline passed/
    assert_receive {:ack, 120}, 2_000
    refute_receive {:published, _, _, "c120"}, 100

    # the chunks sent are the start of the same generation run to its end
    streamed = Enum.map_join(chunks, & &1["delta"])

    [{:ok, whole}] =
      Engine.generate_text_batch(gpt, [Engine.text_request("A", String.length(streamed))])

    assert whole == "A" <> streamed
  end

  defp stream_frames(tag, acc) do
    frame = reply_for(tag)
    if frame["done"], do: Enum.reverse([frame | acc]), else: stream_frames(tag, [frame | acc])
  end

  test "a stream whose generation runs again publishes each frame once, in order",
       %{chan: chan} do
    # what a batcher sends when a batch with a streamed request failed and is retried one
    # request at a time: the chunks of the failed run, a restart, the retried run's
    key = {ServeEx.Pipeline.ReplyPublisher, {Fake, chan}, 95}
    tag = {key, @reply_queue, "c95"}
    publisher = Process.whereis(ServeEx.Pipeline.ReplyPublisher)
    for text <- ["ab", "cd"], do: send(publisher, {:stream_chunk, tag, text})
    send(publisher, {:stream_restart, tag})
    for text <- ["ab", "cd", "ef"], do: send(publisher, {:stream_chunk, tag, text})

    message = %ServeEx.Message{
      payload: "",
      reply_to: @reply_queue,
      correlation_id: "c95",
      acknowledger: key,
      redelivered: false,
      received_at: System.monotonic_time(:microsecond)
    }

    ServeEx.Acknowledger.settle([{message, {:reply, {:stream_end, key, :length}, :ok}}])

    frames = for _ <- 1..4, do: reply_for(95)
    assert Enum.map(frames, & &1["seq"]) == [0, 1, 2, 3]
    assert Enum.map_join(frames, &Map.get(&1, "delta", "")) == "abcdef"
    assert List.last(frames)["done"] == true
    assert_receive {:ack, 95}, 2_000
    refute_receive {:published, _, _, "c95"}, 100
  end

  test "a bad number fails only its own request; its batch neighbours are answered",
       %{producer: producer} do
    good =
      ~s({"v": 1, "model": "vae", "op": "decode", "z": [[#{Enum.join(List.duplicate("0.5", 20), ",")}]]})

    huge =
      ~s({"v": 1, "model": "vae", "op": "decode", "z": [[1e39#{String.duplicate(",0", 19)}]]})

    deliver(producer, good, 80)
    deliver(producer, huge, 81)
    deliver(producer, good, 82)
    assert %{"ok" => true} = reply_for(80)
    assert %{"ok" => false, "error" => %{"code" => "invalid_argument"}} = reply_for(81)
    assert %{"ok" => true} = reply_for(82)
  end

  test "a drain cancels the consumer, lets work in flight finish, and counts it out",
       %{producer: producer} do
    for tag <- 90..93,
        do: deliver(producer, ~s({"v": 1, "model": "wgan", "op": "generate", "n": 2}), tag)

    assert ServeEx.Drain.run(5_000) == 0
    assert_received :cancelled
    for tag <- 90..93, do: assert_received({:ack, ^tag})
    refute ServeEx.Status.consuming?()
    assert ServeEx.InFlight.count() == 0
  end

  test "a request past its deadline gets deadline_exceeded; a bad deadline invalid_argument",
       %{producer: producer} do
    body = ~s({"v": 1, "model": "vae", "op": "generate", "n": 1})
    deliver(producer, body, 100, deadline: System.os_time(:millisecond) - 1)
    assert %{"error" => %{"code" => "deadline_exceeded"}} = reply_for(100)
    deliver(producer, body, 101, deadline: "tomorrow")
    assert %{"error" => %{"code" => "invalid_argument"}} = reply_for(101)
    deliver(producer, body, 102, deadline: System.os_time(:millisecond) + 60_000)
    assert %{"ok" => true} = reply_for(102)
  end

  test "past a model's admission bound requests are overloaded; other models answer",
       %{producer: producer} do
    ServeEx.Admission.setup([{"gpt", {:text, :short}}, {"vae", :images}], 2)
    on_exit(fn -> ServeEx.Admission.setup([], 64 * 8) end)

    text =
      ~s({"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A", "max_new_tokens": 50})

    # the GPT's scheduler holds the two admitted requests unanswered, so the other
    # three meet a full bound whatever the machine's speed
    batcher = GenServer.whereis(scheduler("gpt", :short))
    :sys.suspend(batcher)
    for tag <- 110..114, do: deliver(producer, text, tag)
    deliver(producer, ~s({"v": 1, "model": "vae", "op": "generate", "n": 1}), 115)

    overloaded = for _ <- 1..3, do: next_reply()
    assert Enum.all?(overloaded, &match?({_, %{"error" => %{"code" => "overloaded"}}}, &1))
    assert Enum.all?(overloaded, fn {_, reply} -> reply["error"]["retry_after_ms"] >= 1 end)
    assert %{"ok" => true} = reply_for(115)
    :sys.resume(batcher)
    admitted = for _ <- 1..2, do: next_reply()
    assert Enum.all?(admitted, &match?({_, %{"ok" => true}}, &1))
    tags = Enum.map(overloaded ++ admitted, &elem(&1, 0))
    assert Enum.sort(tags) == Enum.map(110..114, &"c#{&1}")
  end

  test "continuous batching: a short text among long ones is answered first, each text its lone text",
       %{producer: producer} do
    {:ok, gpt} = ModelRegistry.lookup("gpt")

    lone =
      Engine.generate_text_batch(gpt, [
        Engine.text_request("A", 120, seed: 3, temperature: 0.8),
        Engine.text_request("B", 120, seed: 4, temperature: 0.8),
        Engine.text_request("ROMEO:", 5),
        Engine.text_request("ROMEO:", 300)
      ])

    [{:ok, a}, {:ok, b}, {:ok, short}, {:ok, "ROMEO:" <> greedy}] = lone
    # a stop string from the greedy text's 20th character on: the text ends before its
    # first appearance
    stop = String.slice(greedy, 20, 2)
    [before_stop | _] = String.split(greedy, stop)

    scheduler = GenServer.whereis(scheduler("gpt", :long))
    :sys.suspend(scheduler)
    # two long texts and a stopped one join the long lane's batch together; a short
    # one runs in the short lane beside them
    deliver(producer, text_body("gpt", "A", 120, ~s(, "seed": 3, "temperature": 0.8)), 140)
    deliver(producer, text_body("gpt", "B", 120, ~s(, "seed": 4, "temperature": 0.8)), 141)
    deliver(producer, text_body("gpt", "ROMEO:", 5), 142)
    deliver(producer, text_body("gpt", "ROMEO:", 300, ~s(, "stop": [#{:jsx.encode(stop)}])), 143)
    wait_until(fn -> Process.info(scheduler, :message_queue_len) == {:message_queue_len, 3} end)
    :sys.resume(scheduler)

    replies = for _ <- 1..4, do: next_reply()
    assert Enum.map(replies, &elem(&1, 0)) |> Enum.take(2) |> Enum.sort() == ["c142", "c143"]
    replies = Map.new(replies)

    assert replies["c140"] == %{
             "v" => 1,
             "ok" => true,
             "text" => a,
             "finish_reason" => "length",
             "new_tokens" => 120
           }

    assert replies["c141"]["text"] == b
    assert replies["c142"]["text"] == short

    assert replies["c143"] == %{
             "v" => 1,
             "ok" => true,
             "text" => "ROMEO:" <> before_stop,
             "finish_reason" => "stop",
             # the stop string's two tokens were generated too
             "new_tokens" => length(String.to_charlist(before_stop)) + 2
           }
  end

  test "work still unsettled when the drain times out is requeued", %{producer: producer} do
    # both processors hold still: the delivery is counted in flight and never settled
    processors =
      for i <- 0..1,
          do: GenServer.whereis({:via, Registry, {ServeEx.Pipeline.Registry, {:processor, i}}})

    Enum.each(processors, &:sys.suspend/1)
    deliver(producer, ~s({"v": 1, "model": "vae", "op": "generate", "n": 1}), 120)
    wait_until(fn -> ServeEx.InFlight.count() == 1 end)

    assert ServeEx.Drain.run(50) == 1
    assert_received :cancelled
    assert_received :requeued_all
    Enum.each(processors, &:sys.resume/1)
  end

  defp batcher(id), do: {:via, Registry, {ServeEx.Pipeline.Registry, {:batcher, id}}}

  defp scheduler(id, lane),
    do: {:via, Registry, {ServeEx.Pipeline.Registry, {:text, id, lane}}}

  # the next reply published, whichever request it answers
  defp next_reply do
    assert_receive {:published, @reply_queue, body, cid}, 2_000
    {cid, :jsx.decode(body, [:return_maps])}
  end

  defp wait_until(condition, tries \\ 100) do
    cond do
      condition.() -> :ok
      tries == 0 -> flunk("condition never held")
      true -> Process.sleep(10) && wait_until(condition, tries - 1)
    end
  end
end
