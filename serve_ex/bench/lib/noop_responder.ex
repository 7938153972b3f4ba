defmodule ServeEx.Bench.NoopResponder do
  @moduledoc """
  The broker's own ceiling, a benchmark baseline: answers every request on its
  `reply_to` with a fixed reply and acks it, computing nothing. Same queue type and
  prefetch as serve_ex. Replies are `{"v":1,"ok":true,"text":"..."}`, padded to
  REPLY_BYTES when given (to match the size of the service's replies). Two modes:

  - `plain`: the reply on the consuming channel, the ack right after it, no publisher
    confirms: the raw round trip;
  - `confirmed`: serve_ex's delivery protocol without its work: the reply on a channel
    of a second connection, `mandatory`, under publisher confirms, and the request acked
    only once its reply is confirmed. What this costs against `plain` is the price of
    never losing a reply, not of the service.

      mix run --no-start -e 'ServeEx.Bench.NoopResponder.main()' QUEUE PREFETCH plain|confirmed [REPLY_BYTES]
  """
  import ServeEx.AMQP.Records
  alias ServeEx.AMQP.Client

  @spec main([String.t()]) :: no_return()
  def main(args \\ System.argv()) do
    [queue, prefetch, mode | size] = args
    reply = reply(size |> List.first("0") |> String.to_integer())
    chan = ServeEx.Bench.Load.channel()
    :ok = Client.declare_topology(chan, queue)

    loop =
      case mode do
        "plain" ->
          fn -> plain(chan, reply) end

        "confirmed" ->
          replies = ServeEx.Bench.Load.channel()
          :ok = Client.confirm_select(replies, self())
          fn -> confirmed(chan, replies, reply, 1, %{}) end
      end

    {:ok, _tag} = Client.consume(chan, queue, String.to_integer(prefetch))
    IO.puts("noop responder (#{mode}) ready on #{queue}")
    loop.()
  end

  # the smallest reply, padded to `bytes`
  defp reply(bytes) do
    pad = max(bytes - byte_size(~s({"v":1,"ok":true,"text":""})), 0)
    ~s({"v":1,"ok":true,"text":"#{:binary.copy("x", pad)}"})
  end

  defp plain(chan, reply) do
    receive do
      {r_basic_deliver(delivery_tag: tag), r_amqp_msg(props: props)} ->
        out = r_p_basic(correlation_id: r_p_basic(props, :correlation_id))
        publish = r_basic_publish(routing_key: r_p_basic(props, :reply_to))
        :amqp_channel.cast(chan, publish, r_amqp_msg(props: out, payload: reply))
        :amqp_channel.cast(chan, r_basic_ack(delivery_tag: tag))

      _ ->
        :ok
    end

    plain(chan, reply)
  end

  # `pending`: publish sequence number => the delivery tag its confirm will ack
  defp confirmed(chan, replies, reply, seqno, pending) do
    receive do
      message ->
        case Client.classify(message) do
          {:deliver, _payload, meta} ->
            :ok = Client.publish(replies, meta.reply_to, reply, meta.correlation_id, seqno, nil)
            confirmed(chan, replies, reply, seqno + 1, Map.put(pending, seqno, meta.delivery_tag))

          {:confirm, up_to, multiple, _verdict} ->
            done = if multiple, do: for({s, _} <- pending, s <= up_to, do: s), else: [up_to]
            for s <- done, do: Client.ack(chan, pending[s])
            confirmed(chan, replies, reply, seqno, Map.drop(pending, done))

          _ ->
            confirmed(chan, replies, reply, seqno, pending)
        end
    end
  end
end
