defmodule ServeEx.Metrics do
  @moduledoc """
  Prometheus metrics (the `prometheus` Erlang library), served as text on `/metrics`:

  - `serve_ex_requests_total{model, outcome}`: settled requests; outcome is `ok`, a
    wire error code (`deadline_exceeded` and `overloaded` among them), `retried`, `dead_lettered`, `unroutable` (no queue took the
    reply), `reply_refused` (the broker nacked it) or `quarantined`;
  - `serve_ex_batch_rows`: rows per engine call (histogram);
  - `serve_ex_queue_time_ms{model}`: receipt to the start of its batch (histogram);
  - `serve_ex_compute_time_ms{model}`: one batch's engine time (histogram);
  - `serve_ex_request_duration_ms`: receipt to ack (histogram);
  - `serve_ex_redeliveries_total`: deliveries the broker flagged as redelivered;
  - `serve_ex_drain_duration_ms`: how long the last drain took (gauge).
  """

  @spec setup() :: :ok
  def setup do
    :prometheus_counter.declare(
      name: :serve_ex_requests_total,
      labels: [:model, :outcome],
      help: "Requests settled, by model and outcome"
    )

    :prometheus_histogram.declare(
      name: :serve_ex_batch_rows,
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
      help: "Rows per engine call"
    )

    :prometheus_histogram.declare(
      name: :serve_ex_request_duration_ms,
      buckets: [0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000, 5000],
      help: "Time from receipt to ack, in milliseconds"
    )

    :prometheus_counter.declare(
      name: :serve_ex_redeliveries_total,
      help: "Redelivered requests received"
    )

    for {name, help} <- [
          serve_ex_queue_time_ms: "Time from receipt to the start of the request's batch, in ms",
          serve_ex_compute_time_ms: "Engine time of one batch, in milliseconds"
        ] do
      :prometheus_histogram.declare(
        name: name,
        labels: [:model],
        buckets: [0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000, 5000, 20_000],
        help: help
      )
    end

    :prometheus_gauge.declare(
      name: :serve_ex_drain_duration_ms,
      help: "Duration of the last drain, in milliseconds"
    )

    :ok
  end

  @spec request(String.t(), atom() | String.t(), integer()) :: :ok
  def request(model, outcome, received_at) do
    :prometheus_counter.inc(:serve_ex_requests_total, [model, outcome])
    elapsed = System.monotonic_time(:microsecond) - received_at
    :prometheus_histogram.observe(:serve_ex_request_duration_ms, elapsed / 1000)
    :ok
  end

  @spec batch(non_neg_integer()) :: :ok
  def batch(rows), do: :prometheus_histogram.observe(:serve_ex_batch_rows, rows)

  @spec redelivery() :: :ok
  def redelivery, do: :prometheus_counter.inc(:serve_ex_redeliveries_total)

  @spec queue_time(String.t(), integer()) :: :ok
  def queue_time(model, us),
    do: :prometheus_histogram.observe(:serve_ex_queue_time_ms, [model], us / 1000)

  @spec compute_time(String.t(), integer()) :: :ok
  def compute_time(model, us),
    do: :prometheus_histogram.observe(:serve_ex_compute_time_ms, [model], us / 1000)

  @spec drain(non_neg_integer()) :: :ok
  def drain(ms), do: :prometheus_gauge.set(:serve_ex_drain_duration_ms, ms)

  @spec text() :: binary()
  def text, do: :prometheus_text_format.format()
end
