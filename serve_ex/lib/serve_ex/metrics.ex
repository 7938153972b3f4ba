defmodule ServeEx.Metrics do
  @moduledoc """
  The service's metrics, served in the Prometheus text format on `/metrics`:

  - `serve_ex_requests_total{model, outcome}`: settled requests; outcome is `ok`, a
    wire error code (`deadline_exceeded` and `overloaded` among them), `retried`,
    `dead_lettered`, `unroutable` (no queue took the reply), `reply_refused` (the
    broker nacked it) or `quarantined`;
  - `serve_ex_batch_rows`: rows per engine call (histogram);
  - `serve_ex_queue_time_ms{model}`: receipt to the start of its batch (histogram);
  - `serve_ex_compute_time_ms{model}`: one batch's engine time (histogram);
  - `serve_ex_request_duration_ms`: receipt to ack (histogram);
  - `serve_ex_redeliveries_total`: deliveries the broker flagged as redelivered;
  - `serve_ex_drain_duration_ms`: how long the last drain took (gauge).

  Text generation, named as vLLM and TGI name theirs (`ServeEx.Pipeline.TextScheduler`):
  - `serve_ex_time_to_first_token_ms{model}`: receipt to the first new token (histogram);
  - `serve_ex_inter_token_latency_ms{model}`: between a sequence's tokens (histogram);
  - `serve_ex_num_requests_running{model}`: sequences in the decoding batch (gauge);
  - `serve_ex_num_requests_waiting{model}`: requests waiting to join it (gauge);
  - `serve_ex_generation_tokens_total{model}`: new tokens generated (counter);
  - `serve_ex_batch_current_size{model}`: sequences per decoding step (histogram).

  Then the VM's own (`erlang_vm_*`), from the `prometheus` library's collectors.

  Each update is one `:ets.update_counter/4` on a public table (about 0.5 µs), not a
  call into the `prometheus` library (about 4 µs each, three per request): the series
  key is `{metric, labels}`, and a histogram's row holds a count per bucket and the
  sum. Times are kept in whole microseconds and shown in milliseconds. Label values
  are bounded: a model is a served model's id or `unknown` (`ServeEx.Message`).
  """

  @table __MODULE__

  @ms_buckets [0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000, 5000, 20_000]

  # name => {type, help, label names, bucket bounds (histograms), stored units per shown unit}
  @metrics %{
    serve_ex_requests_total:
      {:counter, "Requests settled, by model and outcome", [:model, :outcome], nil, 1},
    serve_ex_batch_rows:
      {:histogram, "Rows per engine call", [], [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], 1},
    serve_ex_request_duration_ms:
      {:histogram, "Time from receipt to ack, in milliseconds", [],
       [0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000, 5000], 1000},
    serve_ex_queue_time_ms:
      {:histogram, "Time from receipt to the start of the request's batch, in ms", [:model],
       @ms_buckets, 1000},
    serve_ex_compute_time_ms:
      {:histogram, "Engine time of one batch, in milliseconds", [:model], @ms_buckets, 1000},
    serve_ex_redeliveries_total: {:counter, "Redelivered requests received", [], nil, 1},
    serve_ex_drain_duration_ms:
      {:gauge, "Duration of the last drain, in milliseconds", [], nil, 1},
    serve_ex_time_to_first_token_ms:
      {:histogram, "Time from receipt to a request's first new token, in ms", [:model],
       @ms_buckets, 1000},
    serve_ex_inter_token_latency_ms:
      {:histogram, "Time between two new tokens of a sequence, in ms", [:model], @ms_buckets,
       1000},
    serve_ex_num_requests_running: {:gauge, "Sequences in the decoding batch", [:model], nil, 1},
    serve_ex_num_requests_waiting:
      {:gauge, "Text requests waiting to join the decoding batch", [:model], nil, 1},
    serve_ex_generation_tokens_total: {:counter, "New tokens generated", [:model], nil, 1},
    serve_ex_batch_current_size:
      {:histogram, "Sequences per decoding step", [:model], [1, 2, 4, 8, 16, 32, 64, 128], 1}
  }

  # histogram => {bounds in stored units, the sum's position in a row, a new row's
  # counters (one per bound, +Inf, the sum) as a tuple}, worked out at compile time
  @layouts for {name, {:histogram, _, _, bounds, scale}} <- @metrics,
               into: %{},
               do:
                 {name,
                  {Enum.map(bounds, &(&1 * scale)), length(bounds) + 3,
                   List.to_tuple(List.duplicate(0, length(bounds) + 2))}}

  @doc "Creates the table (once, at application start, by a process that outlives it)."
  @spec setup() :: :ok
  def setup do
    if :ets.whereis(@table) == :undefined do
      :ets.new(@table, [:named_table, :public, :set, write_concurrency: true])
    end

    :ok
  end

  @spec request(String.t(), atom() | String.t(), integer()) :: :ok
  def request(model, outcome, received_at) do
    inc(:serve_ex_requests_total, [model, to_string(outcome)], 1)
    elapsed_us = System.monotonic_time(:microsecond) - received_at
    observe(:serve_ex_request_duration_ms, [], elapsed_us)
  end

  @spec batch(non_neg_integer()) :: :ok
  def batch(rows), do: observe(:serve_ex_batch_rows, [], rows)

  @spec redelivery() :: :ok
  def redelivery, do: inc(:serve_ex_redeliveries_total, [], 1)

  @spec queue_time(String.t(), integer()) :: :ok
  def queue_time(model, us), do: observe(:serve_ex_queue_time_ms, [model], us)

  @spec compute_time(String.t(), integer()) :: :ok
  def compute_time(model, us), do: observe(:serve_ex_compute_time_ms, [model], us)

  @spec drain(non_neg_integer()) :: :ok
  def drain(ms), do: set(:serve_ex_drain_duration_ms, [], ms)

  @doc "One decoding step of `model`: its sequences, and how many requests wait."
  @spec decoding_step(String.t(), non_neg_integer(), non_neg_integer()) :: :ok
  def decoding_step(model, running, waiting) do
    observe(:serve_ex_batch_current_size, [model], running)
    set(:serve_ex_num_requests_running, [model], running)
    set(:serve_ex_num_requests_waiting, [model], waiting)
  end

  @doc "A new token of `model`: `since_us` after receipt (the first) or its previous token."
  @spec token(String.t(), :first | :next, integer()) :: :ok
  def token(model, which, since_us) do
    inc(:serve_ex_generation_tokens_total, [model], 1)

    case which do
      :first -> observe(:serve_ex_time_to_first_token_ms, [model], since_us)
      :next -> observe(:serve_ex_inter_token_latency_ms, [model], since_us)
    end
  end

  defp set(name, labels, value) do
    :ets.insert(@table, {{name, labels}, value})
    :ok
  end

  @doc """
  A series' value: a counter's or gauge's number (0 if never updated), or a
  histogram's `%{buckets: counts per bucket, +Inf last, not cumulative, sum:, count:}`
  with the sum in stored units (µs for the `_ms` histograms).
  """
  @spec value(atom(), [term()]) :: number() | map()
  def value(name, labels) do
    case {elem(Map.fetch!(@metrics, name), 0), :ets.lookup(@table, {name, labels})} do
      {:histogram, []} -> histogram_value(name, empty_row(name))
      {:histogram, [row]} -> histogram_value(name, row)
      {_, []} -> 0
      {_, [{_, n}]} -> n
    end
  end

  @doc "Every metric in the Prometheus text format (0.0.4), the VM's after the service's."
  @spec text() :: iodata()
  def text do
    rows = :ets.tab2list(@table)
    own = for {name, spec} <- Enum.sort(@metrics), do: family(name, spec, rows)
    [own, :prometheus_text_format.format()]
  end

  defp inc(name, labels, n) do
    :ets.update_counter(@table, {name, labels}, n, {{name, labels}, 0})
    :ok
  end

  # One bucket's count and the sum move in a single update; the bucket is the first
  # bound >= value, or +Inf. A row is {key, count per bound..., +Inf count, sum}.
  defp observe(name, labels, value) do
    {bounds, sum_pos, zeros} = Map.fetch!(@layouts, name)
    key = {name, labels}
    updates = [{bucket_pos(bounds, value, 2), 1}, {sum_pos, value}]
    :ets.update_counter(@table, key, updates, Tuple.insert_at(zeros, 0, key))
    :ok
  end

  # the row position of the first bucket whose bound holds `value`; past the last, +Inf's
  defp bucket_pos([bound | _], value, pos) when value <= bound, do: pos
  defp bucket_pos([_ | bounds], value, pos), do: bucket_pos(bounds, value, pos + 1)
  defp bucket_pos([], _value, pos), do: pos

  defp empty_row(name) do
    case @layouts do
      %{^name => {_, _, zeros}} -> Tuple.insert_at(zeros, 0, nil)
      _ -> {nil, 0}
    end
  end

  defp histogram_value(name, row) do
    {bounds, _, _} = Map.fetch!(@layouts, name)
    [_key | counts] = Tuple.to_list(row)
    {buckets, [sum]} = Enum.split(counts, length(bounds) + 1)
    %{buckets: buckets, sum: sum, count: Enum.sum(buckets)}
  end

  defp family(name, {type, help, label_names, _, _}, rows) do
    found = for row <- rows, match?({^name, _}, elem(row, 0)), do: {elem(elem(row, 0), 1), row}
    found = if found == [] and label_names == [], do: [{[], empty_row(name)}], else: found

    [
      "# HELP #{name} #{help}\n# TYPE #{name} #{type}\n",
      for({labels, row} <- Enum.sort(found), do: series(name, type, label_names, labels, row))
    ]
  end

  defp series(name, :histogram, label_names, labels, row) do
    {:histogram, _, _, bounds, scale} = Map.fetch!(@metrics, name)
    %{buckets: buckets, sum: sum, count: count} = histogram_value(name, row)
    pairs = Enum.zip(label_names, labels)
    cumulative = Enum.scan(buckets, &+/2)
    les = Enum.map(bounds, &number/1) ++ ["+Inf"]

    [
      for {le, n} <- Enum.zip(les, cumulative) do
        "#{name}_bucket#{label_text(pairs ++ [le: le])} #{n}\n"
      end,
      "#{name}_sum#{label_text(pairs)} #{number(sum / scale)}\n",
      "#{name}_count#{label_text(pairs)} #{count}\n"
    ]
  end

  defp series(name, _counter_or_gauge, label_names, labels, {_, n}),
    do: "#{name}#{label_text(Enum.zip(label_names, labels))} #{n}\n"

  defp label_text([]), do: ""

  defp label_text(pairs) do
    inner = Enum.map_join(pairs, ",", fn {k, v} -> ~s(#{k}="#{escape(to_string(v))}") end)
    "{#{inner}}"
  end

  # the text format's escapes in a label value: backslash, double quote, newline
  defp escape(value) do
    value
    |> String.replace("\\", "\\\\")
    |> String.replace("\"", "\\\"")
    |> String.replace("\n", "\\n")
  end

  defp number(n) when is_integer(n), do: Integer.to_string(n)
  defp number(n) when n == trunc(n), do: Integer.to_string(trunc(n))
  defp number(n), do: Float.to_string(n)
end
