defmodule ServeEx.Pipeline.Producer do
  @moduledoc """
  The AMQP consumer. It opens a channel, sets the prefetch (the backpressure: the
  broker sends at most that many unacked deliveries), and hands each delivery to a
  processor, round-robin, as a `%ServeEx.Message{}`.

  It waits for the broker rather than crashing while there is none. If its channel
  dies it stops, and the pipeline restarts as a whole: the broker requeues what the
  old channel had not acked, and the new consumer gets it again.
  """
  use GenServer
  require Logger

  alias ServeEx.{AMQP, Connection, Message, Metrics}
  alias ServeEx.Pipeline.Processor

  @retry_ms 200

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, [:queue, :prefetch, :processors, connection: Connection])
    GenServer.start_link(__MODULE__, opts, name: __MODULE__)
  end

  @impl true
  def init(opts) do
    send(self(), :subscribe)
    {:ok, opts |> Map.new() |> Map.merge(%{chan: nil, next: 0})}
  end

  @impl true
  def handle_info(:subscribe, state) do
    case Connection.open_channel(state.connection) do
      {:ok, chan} ->
        # Linked both ways: if this process dies (even by :kill) the channel closes and
        # the broker requeues its unacked deliveries; if the channel dies, so does this.
        Process.link(chan)
        :ok = AMQP.impl().consume(chan, state.queue, state.prefetch)
        {:noreply, %{state | chan: chan}}

      {:error, _} ->
        Process.send_after(self(), :subscribe, @retry_ms)
        {:noreply, state}
    end
  end

  def handle_info(message, state) do
    case AMQP.impl().classify(message) do
      {:deliver, payload, meta} -> {:noreply, dispatch(payload, meta, state)}
      :cancelled -> {:stop, :consumer_cancelled, state}
      _ -> {:noreply, state}
    end
  end

  defp dispatch(payload, meta, state) do
    if meta.redelivered, do: Metrics.redelivery()

    message = %Message{
      payload: payload,
      reply_to: meta.reply_to,
      correlation_id: meta.correlation_id,
      acknowledger: {AMQP.impl(), state.chan, meta.delivery_tag},
      redelivered: meta.redelivered,
      received_at: System.monotonic_time(:microsecond)
    }

    Processor.handle(rem(state.next, state.processors), message)
    %{state | next: state.next + 1}
  end
end
