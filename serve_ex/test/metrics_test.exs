defmodule ServeEx.MetricsTest do
  @moduledoc "The metrics' arithmetic and their text format, on series of their own."
  use ExUnit.Case, async: true

  alias ServeEx.Metrics

  test "a histogram counts each value in the first bucket whose bound holds it" do
    # queue-time bounds (ms): 0.1, 0.5, 1, 2, ...; values in µs
    for us <- [0, 100, 101, 500, 2_000, 30_000_000], do: Metrics.queue_time("metrics-a", us)

    %{buckets: buckets, sum: sum, count: 6} =
      Metrics.value(:serve_ex_queue_time_ms, ["metrics-a"])

    assert Enum.take(buckets, 4) == [2, 2, 0, 1]
    assert List.last(buckets) == 1
    assert sum == 0 + 100 + 101 + 500 + 2_000 + 30_000_000
  end

  test "the text shows cumulative buckets, the sum in milliseconds, and escaped labels" do
    model = ~s(metrics "b"\\)
    Metrics.queue_time(model, 250)
    Metrics.queue_time(model, 1_500)
    Metrics.request(model, :ok, System.monotonic_time(:microsecond))
    Metrics.request(model, :ok, System.monotonic_time(:microsecond))
    text = IO.iodata_to_binary(Metrics.text())
    label = ~s(model="metrics \\"b\\"\\\\")

    for line <- [
          "# TYPE serve_ex_queue_time_ms histogram",
          ~s(serve_ex_queue_time_ms_bucket{#{label},le="0.1"} 0),
          ~s(serve_ex_queue_time_ms_bucket{#{label},le="0.5"} 1),
          ~s(serve_ex_queue_time_ms_bucket{#{label},le="1"} 1),
          ~s(serve_ex_queue_time_ms_bucket{#{label},le="2"} 2),
          ~s(serve_ex_queue_time_ms_bucket{#{label},le="+Inf"} 2),
          "serve_ex_queue_time_ms_sum{#{label}} 1.75",
          "serve_ex_queue_time_ms_count{#{label}} 2",
          ~s(serve_ex_requests_total{#{label},outcome="ok"} 2)
        ] do
      assert text =~ line <> "\n", line
    end

    # an unlabelled metric shows even before its first update; the VM's follow
    assert text =~ ~r/^serve_ex_drain_duration_ms \d+$/m
    assert text =~ "erlang_vm_"
  end
end
