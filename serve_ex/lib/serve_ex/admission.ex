defmodule ServeEx.Admission do
  @moduledoc """
  Bounded admission per model: at most `MAX_QUEUED_ROWS` rows (images or prompts) may
  wait in or be computed by one model's batcher. A processor admits a request before
  handing it on; past the bound the request is answered `overloaded` at once, with a
  hint of when to retry (the model's last batch duration), and is not computed. The
  batcher releases the rows of each batch it settles, and resets its model's count
  when it starts (a restarted pipeline holds nothing).

  Counts live in `:atomics`, one array per model: index 1 the queued rows, index 2 the
  last batch's duration in milliseconds.
  """

  @queued 1
  @last_batch_ms 2

  @doc "Sets the bound and creates the counters of `model_ids` (pipeline start)."
  @spec setup([String.t()], pos_integer()) :: :ok
  def setup(model_ids, max_rows) do
    :persistent_term.put({__MODULE__, :max_rows}, max_rows)

    Enum.each(model_ids, &counters/1)

    :ok
  end

  @doc "Admits `rows` more rows for `model_id`, or says how long to wait."
  @spec admit(String.t(), pos_integer()) :: :ok | {:overloaded, non_neg_integer()}
  def admit(model_id, rows) do
    ref = counters(model_id)
    max = :persistent_term.get({__MODULE__, :max_rows})

    if :atomics.add_get(ref, @queued, rows) > max do
      :atomics.sub(ref, @queued, rows)
      {:overloaded, max(:atomics.get(ref, @last_batch_ms), 1)}
    else
      :ok
    end
  end

  @doc "Releases `rows` after their batch was settled, recording how long it took."
  @spec release(String.t(), non_neg_integer(), non_neg_integer()) :: :ok
  def release(model_id, rows, batch_ms) do
    ref = counters(model_id)
    :atomics.sub(ref, @queued, rows)
    :atomics.put(ref, @last_batch_ms, batch_ms)
  end

  @doc "Forgets what `model_id` had admitted (its batcher starts empty)."
  @spec reset(String.t()) :: :ok
  def reset(model_id), do: :atomics.put(counters(model_id), @queued, 0)

  @spec queued(String.t()) :: integer()
  def queued(model_id), do: :atomics.get(counters(model_id), @queued)

  # Created by setup/2 for the served models; a model started on its own (a test's
  # batcher) gets its array on first use.
  defp counters(model_id) do
    case :persistent_term.get({__MODULE__, model_id}, nil) do
      nil ->
        ref = :atomics.new(2, signed: true)
        :persistent_term.put({__MODULE__, model_id}, ref)
        ref

      ref ->
        ref
    end
  end
end
