defmodule ServeEx.Admission do
  @moduledoc """
  Bounded admission per model, keyed `{model id, kind}` (`ServeEx.Pipeline.Workers`):
  at most `MAX_QUEUED_ROWS` image rows, or text requests, may wait in or be computed by
  one model's worker. A processor admits a request before handing it on; past the bound
  the request is answered `overloaded` at once, with a hint of when to retry (the
  worker's last batch or step duration), and is not computed. The worker releases what
  it settles, and resets its count when it starts (a restarted pipeline holds nothing).

  Counts live in `:atomics`, one array per key: index 1 the queued rows, index 2 the
  last batch's duration in milliseconds.
  """

  @queued 1
  @last_batch_ms 2

  @typedoc "Whose rows are counted: a model's worker (`ServeEx.Pipeline.Workers.admission_key/1`)."
  @type key :: {String.t(), term()}

  @doc "Sets the bound and creates the counters of `keys` (pipeline start)."
  @spec setup([key()], pos_integer()) :: :ok
  def setup(keys, max_rows) do
    :persistent_term.put({__MODULE__, :max_rows}, max_rows)

    Enum.each(keys, &counters/1)

    :ok
  end

  @doc "Admits `rows` more rows for `key`, or says how long to wait."
  @spec admit(key(), pos_integer()) :: :ok | {:overloaded, non_neg_integer()}
  def admit(key, rows) do
    ref = counters(key)
    max = :persistent_term.get({__MODULE__, :max_rows})

    if :atomics.add_get(ref, @queued, rows) > max do
      :atomics.sub(ref, @queued, rows)
      {:overloaded, max(:atomics.get(ref, @last_batch_ms), 1)}
    else
      :ok
    end
  end

  @doc "Releases `rows` after their batch was settled, recording how long it took."
  @spec release(key(), non_neg_integer(), non_neg_integer()) :: :ok
  def release(key, rows, batch_ms) do
    ref = counters(key)
    :atomics.sub(ref, @queued, rows)
    :atomics.put(ref, @last_batch_ms, batch_ms)
  end

  @doc "Forgets what `key` had admitted (its batcher starts empty)."
  @spec reset(key()) :: :ok
  def reset(key), do: :atomics.put(counters(key), @queued, 0)

  @spec queued(key()) :: integer()
  def queued(key), do: :atomics.get(counters(key), @queued)

  # Created by setup/2 for the models served when the pipeline starts; a model that
  # appears later gets its array on first use.
  defp counters(key) do
    case :persistent_term.get({__MODULE__, key}, nil) do
      nil ->
        ref = :atomics.new(2, signed: true)
        :persistent_term.put({__MODULE__, key}, ref)
        ref

      ref ->
        ref
    end
  end
end
