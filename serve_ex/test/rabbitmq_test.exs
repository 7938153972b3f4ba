defmodule ServeEx.RabbitMQTest do
  @moduledoc "The service against the real broker on 127.0.0.1:5672 (tag :rabbitmq)."
  use ExUnit.Case, async: false
  @moduletag :rabbitmq
  @moduletag :capture_log

  import ServeEx.AMQP.Records

  alias ServeEx.{Config, Connection, ModelRegistry}
  alias ServeEx.Test.Paths

  setup do
    start_supervised!({ModelRegistry, {Paths.service_models(), 0}})
    # random, not a counter that starts again with each VM: no queue left by an earlier run
    queue = "serve_ex.test.#{Base.encode16(:crypto.strong_rand_bytes(6), case: :lower)}"
    config = Config.from_env(%{"REQUEST_QUEUE" => queue, "BATCH_TIMEOUT_MS" => "5"})
    start_supervised!({Connection, url: config.amqp_url, queue: queue, amqp: config.amqp})

    start_supervised!(
      {Connection,
       url: config.amqp_url, queue: queue, name: ServeEx.ReplyConnection, amqp: config.amqp},
      id: :reply_connection
    )

    start_supervised!({ServeEx.Pipeline.Supervisor, config})

    {:ok, params} = :amqp_uri.parse(~c"amqp://guest:guest@127.0.0.1:5672")
    {:ok, conn} = :amqp_connection.start(params)
    {:ok, chan} = :amqp_connection.open_channel(conn)
    declare_ok = :"queue.declare_ok"

    {^declare_ok, reply_queue, _, _} =
      :amqp_channel.call(chan, r_queue_declare(exclusive: true, auto_delete: true))

    :amqp_channel.subscribe(chan, r_basic_consume(queue: reply_queue, no_ack: true), self())

    on_exit(fn ->
      :amqp_connection.close(conn)
      {:ok, c} = :amqp_connection.start(params)
      {:ok, ch} = :amqp_connection.open_channel(c)
      :amqp_channel.call(ch, {:"queue.delete", 0, queue, false, false, false})
      :amqp_connection.close(c)
    end)

    %{chan: chan, queue: queue, reply_queue: reply_queue}
  end

  defp request(ctx, body, cid) do
    props = r_p_basic(reply_to: ctx.reply_queue, correlation_id: cid, delivery_mode: 2)

    :amqp_channel.call(
      ctx.chan,
      r_basic_publish(routing_key: ctx.queue),
      r_amqp_msg(props: props, payload: body)
    )

    receive do
      {r_basic_deliver(), r_amqp_msg(props: reply_props, payload: reply)} ->
        assert r_p_basic(reply_props, :correlation_id) == cid
        :jsx.decode(reply, [:return_maps])
    after
      10_000 -> flunk("no reply to #{cid}")
    end
  end

  test "requests through the broker get their replies, valid or not", ctx do
    assert Connection.connected?()

    assert %{"ok" => true, "shape" => [4, 784]} =
             request(ctx, ~s({"v":1,"model":"vae","op":"generate","n":4}), "a")

    assert %{"ok" => true, "text" => "ROMEO:" <> _} =
             request(
               ctx,
               ~s({"v":1,"model":"gpt","op":"generate_text","prompt":"ROMEO:","max_new_tokens":5}),
               "b"
             )

    assert %{"ok" => false, "error" => %{"code" => "malformed_request"}} =
             request(ctx, "\xff not json", "c")

    assert %{"ok" => true} = request(ctx, ~s({"v":1,"model":"wgan","op":"generate","n":1}), "d")
  end
end
