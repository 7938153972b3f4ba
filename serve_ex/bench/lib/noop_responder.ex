defmodule ServeEx.Bench.NoopResponder do
  @moduledoc """
  The broker's own ceiling, a benchmark baseline: answers every request on its
  `reply_to` with a fixed reply and acks it, computing nothing. Same queue type and
  prefetch as serve_ex; no publisher confirms, so it measures the raw round trip.

      mix run --no-start -e 'ServeEx.Bench.NoopResponder.main()' QUEUE [PREFETCH]
  """
  import ServeEx.AMQP.Records

  @reply ~s({"v":1,"ok":true,"text":""})

  @spec main([String.t()]) :: no_return()
  def main(args \\ System.argv()) do
    [queue | rest] = args
    prefetch = rest |> List.first("64") |> String.to_integer()
    chan = ServeEx.Bench.Load.channel()
    :ok = ServeEx.AMQP.Client.declare_topology(chan, queue)
    {:ok, _tag} = ServeEx.AMQP.Client.consume(chan, queue, prefetch)
    IO.puts("noop responder ready on #{queue}")
    loop(chan)
  end

  defp loop(chan) do
    receive do
      {r_basic_deliver(delivery_tag: tag), r_amqp_msg(props: props)} ->
        out = r_p_basic(correlation_id: r_p_basic(props, :correlation_id))
        publish = r_basic_publish(routing_key: r_p_basic(props, :reply_to))
        :amqp_channel.cast(chan, publish, r_amqp_msg(props: out, payload: @reply))
        :amqp_channel.cast(chan, r_basic_ack(delivery_tag: tag))

      _ ->
        :ok
    end

    loop(chan)
  end
end
