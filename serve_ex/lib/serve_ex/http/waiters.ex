defmodule ServeEx.HTTP.Waiters do
  @moduledoc """
  The HTTP handlers waiting for replies, counted by monitor. A handler counts itself
  in with `enter/0` and out with `leave/0`; one that dies first is counted out by its
  monitor (cowboy kills the handler of a client that closed its connection, so no
  `after` of the handler's own runs). The count is `ServeEx.InFlight.http_count/0`,
  which a drain waits on: a hang-up can no longer hold a drain until its timeout.
  `submit/2` does both around handing a request to the pipeline.
  """
  use GenServer

  alias ServeEx.{InFlight, Message}
  alias ServeEx.Pipeline.Processor

  @spec start_link(term()) :: GenServer.on_start()
  def start_link(_arg), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc """
  Hands an HTTP request to the pipeline and returns `await.(ref)`, the calling handler
  counted in meanwhile. `fields` are the request's own `ServeEx.Message` fields (its
  `payload`, and any of `correlation_id`, `deadline`, `route`); its reply comes to the
  caller tagged with `ref`.
  """
  @spec submit(keyword(), (reference() -> result)) :: result when result: term()
  def submit(fields, await) do
    ref = make_ref()

    message =
      struct!(
        Message,
        [
          reply_to: nil,
          correlation_id: nil,
          acknowledger: ServeEx.HTTP.Acknowledger.new(ref),
          redelivered: false,
          received_at: System.monotonic_time(:microsecond)
        ] ++ fields
      )

    :ok = enter()

    try do
      :ok = Processor.handle_http(message)
      await.(ref)
    after
      leave()
    end
  end

  @doc "Counts the calling handler in, until `leave/0` or its exit."
  @spec enter() :: :ok
  def enter, do: GenServer.call(__MODULE__, :enter)

  @doc "Counts the calling handler out."
  @spec leave() :: :ok
  def leave, do: GenServer.call(__MODULE__, :leave)

  # A restart follows the listener's (it comes after this process in a :rest_for_one
  # tree): no handler of before is left to count.
  @impl true
  def init(nil) do
    InFlight.add_http(-InFlight.http_count())
    {:ok, %{}}
  end

  @impl true
  def handle_call(:enter, {pid, _tag}, monitors) do
    InFlight.add_http(1)
    {:reply, :ok, Map.put(monitors, pid, Process.monitor(pid))}
  end

  def handle_call(:leave, {pid, _tag}, monitors), do: {:reply, :ok, count_out(monitors, pid)}

  @impl true
  def handle_info({:DOWN, _ref, :process, pid, _reason}, monitors),
    do: {:noreply, count_out(monitors, pid)}

  defp count_out(monitors, pid) do
    case Map.pop(monitors, pid) do
      {nil, monitors} ->
        monitors

      {ref, monitors} ->
        Process.demonitor(ref, [:flush])
        InFlight.add_http(-1)
        monitors
    end
  end
end
