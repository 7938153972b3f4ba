defmodule ServeEx.Deadline do
  @moduledoc """
  A request's deadline: the AMQP header `x-deadline-ms`, the Unix time in milliseconds
  after which its client no longer wants the answer (`shared_schema/wire/properties.json`).
  A request past its deadline before its batch runs gets `deadline_exceeded` and no
  compute. Without the header a request has no deadline.

      iex> ServeEx.Deadline.parse(nil)
      {:ok, nil}
      iex> ServeEx.Deadline.parse(1_900_000_000_000)
      {:ok, 1_900_000_000_000}
      iex> ServeEx.Deadline.parse("soon")
      {:error, :invalid_argument, "the x-deadline-ms header must be a whole number: Unix time in milliseconds"}
  """

  # later than this many milliseconds from now is not a deadline but a mistake
  @max_ahead_ms 24 * 3600 * 1000

  @spec parse(term()) :: {:ok, integer() | nil} | {:error, :invalid_argument, String.t()}
  def parse(nil), do: {:ok, nil}

  def parse(ms) when is_integer(ms) and ms >= 0 do
    if ms - now_ms() > @max_ahead_ms,
      do: {:error, :invalid_argument, "the x-deadline-ms header is more than a day ahead"},
      else: {:ok, ms}
  end

  def parse(_other),
    do:
      {:error, :invalid_argument,
       "the x-deadline-ms header must be a whole number: Unix time in milliseconds"}

  @doc "Whether `deadline` (ms since the epoch, or nil for none) has passed."
  @spec passed?(integer() | nil) :: boolean()
  def passed?(nil), do: false
  def passed?(deadline), do: now_ms() >= deadline

  defp now_ms, do: System.os_time(:millisecond)
end
