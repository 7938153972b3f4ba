defmodule ServeEx.Bench.Load do
  @moduledoc """
  Load generator for the benchmarks: keeps `inflight` requests outstanding on a queue
  for a while (after one second of warm-up) and prints throughput and latency
  percentiles as JSON. It is written on `amqp_client` so that the client is not the
  bottleneck: a pika client tops out near the rates being measured.

      mix run --no-start -e 'ServeEx.Bench.Load.main()' QUEUE BODY_JSON INFLIGHT SECONDS
  """
  import ServeEx.AMQP.Records

  @warmup_us 1_000_000

  @doc "A channel on a fresh connection to the local broker."
  @spec channel(String.t()) :: pid()
  def channel(url \\ "amqp://guest:guest@127.0.0.1:5672") do
    {:ok, _} = Application.ensure_all_started(:amqp_client)
    {:ok, conn} = ServeEx.AMQP.Client.connect(url, "serve_ex bench load")
    {:ok, chan} = :amqp_connection.open_channel(conn)
    chan
  end

  @spec main([String.t()]) :: :ok
  def main(args \\ System.argv()) do
    [queue, body, inflight, seconds] = args
    {inflight, seconds} = {String.to_integer(inflight), String.to_float(seconds)}
    chan = channel()
    declare_ok = :"queue.declare_ok"

    {^declare_ok, reply_queue, _, _} =
      :amqp_channel.call(chan, r_queue_declare(exclusive: true, auto_delete: true))

    r_basic_consume_ok() =
      :amqp_channel.subscribe(chan, r_basic_consume(queue: reply_queue, no_ack: true), self())

    start = System.monotonic_time(:microsecond)

    ctx = %{
      chan: chan,
      queue: queue,
      reply_queue: reply_queue,
      body: body,
      measure_from: start + @warmup_us,
      stop_at: start + @warmup_us + round(seconds * 1_000_000)
    }

    outstanding = Map.new(1..inflight, &send_one(ctx, &1))
    {latencies, errors} = run(ctx, outstanding, inflight + 1, [], 0)
    IO.puts(:jsx.encode(summary(Enum.sort(latencies), seconds, errors)))
  end

  defp send_one(ctx, id) do
    props =
      r_p_basic(
        reply_to: ctx.reply_queue,
        correlation_id: Integer.to_string(id),
        delivery_mode: 2
      )

    :amqp_channel.cast(
      ctx.chan,
      r_basic_publish(routing_key: ctx.queue),
      r_amqp_msg(props: props, payload: ctx.body)
    )

    {id, System.monotonic_time(:microsecond)}
  end

  # Each reply completes a request and, until stop_at, sends the next one.
  defp run(ctx, outstanding, next_id, latencies, errors) do
    receive do
      {r_basic_deliver(), r_amqp_msg(props: props, payload: payload)} ->
        {sent_at, outstanding} =
          Map.pop(outstanding, String.to_integer(r_p_basic(props, :correlation_id)))

        now = System.monotonic_time(:microsecond)
        errors = if String.contains?(payload, ~s("ok":false)), do: errors + 1, else: errors

        latencies =
          if sent_at && now >= ctx.measure_from, do: [now - sent_at | latencies], else: latencies

        cond do
          now < ctx.stop_at ->
            {id, t} = send_one(ctx, next_id)
            run(ctx, Map.put(outstanding, id, t), next_id + 1, latencies, errors)

          map_size(outstanding) == 0 ->
            {latencies, errors}

          true ->
            run(ctx, outstanding, next_id, latencies, errors)
        end

      _ ->
        run(ctx, outstanding, next_id, latencies, errors)
    after
      30_000 -> {latencies, errors + map_size(outstanding)}
    end
  end

  defp summary(sorted, seconds, errors) do
    count = length(sorted)

    pct = fn p ->
      if count == 0, do: nil, else: Enum.at(sorted, min(count - 1, trunc(p * count)))
    end

    %{
      "requests" => count,
      "per_second" => count / seconds,
      "p50_us" => pct.(0.5),
      "p99_us" => pct.(0.99),
      "errors" => errors
    }
  end
end
