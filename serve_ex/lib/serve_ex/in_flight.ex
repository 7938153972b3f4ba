defmodule ServeEx.InFlight do
  @moduledoc """
  How many deliveries the current consumer holds unsettled: the producer counts each
  delivery in, the reply publisher counts each ack or reject out. A new consumer starts
  from zero: the old channel's deliveries were requeued by the broker when it closed.
  Beside it, how many HTTP requests wait for their replies. A drain waits for both to
  reach zero.
  """

  @key {__MODULE__, :counter}

  @doc "Creates the counter (once, at application start)."
  @spec setup() :: :ok
  def setup do
    if :persistent_term.get(@key, nil) == nil,
      do: :persistent_term.put(@key, :counters.new(2, []))

    :ok
  end

  @spec reset() :: :ok
  def reset, do: :counters.put(counter(), 1, 0)

  @spec add(integer()) :: :ok
  def add(n), do: :counters.add(counter(), 1, n)

  @spec count() :: integer()
  def count, do: :counters.get(counter(), 1)

  @doc "Counts HTTP requests in (> 0) or out (< 0); `ServeEx.HTTP.Waiters` does."
  @spec add_http(integer()) :: :ok
  def add_http(n), do: :counters.add(counter(), 2, n)

  @spec http_count() :: integer()
  def http_count, do: :counters.get(counter(), 2)

  defp counter, do: :persistent_term.get(@key)
end
