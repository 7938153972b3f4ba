defmodule ServeEx.Bench.StageCosts do
  @moduledoc """
  What one VAE generate request (n = 1) costs in each in-VM stage of its path, each
  stage timed alone in a loop on one scheduler: decoding and validating the body, the
  admission counters, the engine call (alone, and its share of a 64-row batch, on the
  threads `ENGINE_THREADS` gives the service), the
  reply's encoding, the metrics a request updates, and one hop between processes (a request makes about six: producer,
  processor, batcher, reply publisher, and their replies). What the broker costs is what
  the no-op responder of `make bench-service` measures.

      mix run --no-start -e 'ServeEx.Bench.StageCosts.main()' MODEL_DIR
  """
  alias ServeEx.{Admission, Engine, Metrics, Reply, Request}

  # each timed run takes about this long: enough calls to average, few for slow stages
  @run_us 100_000

  @spec main([String.t()]) :: :ok
  def main(args \\ System.argv()) do
    [dir] = args
    # the engine's threads as the service would set them (ENGINE_THREADS, default 1)
    :ok = Engine.set_threads(ServeEx.Config.from_env().engine_threads)
    {:ok, vae} = Engine.load(Path.join(dir, "vae.safetensors"), "vae")
    body = ~s({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 7})
    lookup = fn _ -> {:ok, vae} end
    Admission.setup([{"vae", :images}], 1_000_000)
    Metrics.setup()
    [{:ok, tensor}] = Engine.generate_batch(vae, [{1, 7, :base64}])
    sixty_four = for seed <- 1..64, do: {1, seed, :base64}

    rows = [
      {"decode and validate the body (Request.parse)", fn -> Request.parse(body, lookup) end, 1},
      {"admit and release (Admission)",
       fn ->
         Admission.admit({"vae", :images}, 1)
         Admission.release({"vae", :images}, 1, 1)
       end, 1},
      {"engine, a batch of 1 (NIF, inline: Engine.runs_inline?/2)",
       fn -> Engine.generate_batch(vae, [{1, 7, :base64}]) end, 1},
      {"engine, one row of a batch of 64", fn -> Engine.generate_batch(vae, sixty_four) end, 64},
      {"encode the reply (Reply.tensor, to one binary)",
       fn -> IO.iodata_to_binary(Reply.tensor(tensor, :base64)) end, 1},
      {"metrics: a request's count and latency, its queue time (Metrics)",
       fn ->
         Metrics.request("vae", :ok, System.monotonic_time(:microsecond))
         Metrics.queue_time("vae", 120)
       end, 1},
      {"one hop between processes (a message there and one back, halved)", hop(), 2}
    ]

    IO.puts("| stage | µs per request |\n|---|---|")

    for {name, fun, per_call} <- rows do
      IO.puts("| #{name} | #{Float.round(median_us(fun) / per_call, 2)} |")
    end

    :ok
  end

  # A round trip to a process that echoes: two hops.
  defp hop do
    echo = spawn_link(fn -> echo() end)

    fn ->
      send(echo, {self(), :ping})
      receive(do: (:pong -> :ok))
    end
  end

  defp echo do
    receive do
      {from, :ping} -> send(from, :pong)
    end

    echo()
  end

  @doc """
  The median over 5 runs of the mean call time of `fun`, in µs, each run about 0.1 s
  long, after a warm-up call that sizes the runs.
  """
  @spec median_us((-> any())) :: float()
  def median_us(fun) do
    {first_us, _} = :timer.tc(fun)
    calls = first_us |> max(1) |> then(&div(@run_us, &1)) |> max(10)

    run = fn ->
      {us, _} = :timer.tc(fn -> Enum.each(1..calls, fn _ -> fun.() end) end)
      us / calls
    end

    Enum.map(1..5, fn _ -> run.() end) |> Enum.sort() |> Enum.at(2)
  end
end
