defmodule ServeEx.Pipeline.Producer do
  @moduledoc """
  The AMQP consumer. It opens a channel, sets the prefetch (the backpressure: the
  broker sends at most that many unacked deliveries), and hands each delivery to a
  processor, round-robin, as a `%ServeEx.Message{}`.

  It waits for the broker rather than crashing while there is none: every answer of
  channel opening but `{:ok, chan}` means "retry later", inside this process, so a
  broker outage never spends the supervisors' restart budget. If its channel dies it
  stops, and the pipeline restarts as a whole: the broker requeues what the old
  channel had not acked, and the new consumer gets it again.

  For a drain, `cancel/0` stops the broker's deliveries (`basic.cancel`) while the
  channel stays open for the acks of work in flight, and `requeue_all/0` hands back
  whatever is still unsettled when the drain runs out of time.
  """
  use GenServer
  require Logger

  alias ServeEx.{Connection, InFlight, Message, Metrics, Status}
  alias ServeEx.Pipeline.{Processor, ReplyPublisher}

  @retry_ms 200

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts =
      Keyword.validate!(opts, [:queue, :prefetch, :processors, :amqp, connection: Connection])

    GenServer.start_link(__MODULE__, opts, name: __MODULE__)
  end

  @doc """
  Cancels the consumer: no new deliveries; those in flight still settle. Returns once
  the broker's `cancel_ok` has come through the consumer, so every delivery sent
  before it has been handed on and counted in `ServeEx.InFlight`.
  """
  @spec cancel() :: :ok
  def cancel, do: GenServer.call(__MODULE__, :cancel, 10_000)

  @doc "Requeues every delivery not yet settled (the end of a drain that timed out)."
  @spec requeue_all() :: :ok
  def requeue_all, do: GenServer.call(__MODULE__, :requeue_all)

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    send(self(), :subscribe)
    {:ok, opts |> Map.new() |> Map.merge(%{chan: nil, tag: nil, next: 0, cancelling: nil})}
  end

  @impl true
  def handle_call(:cancel, _from, %{tag: nil} = state), do: {:reply, :ok, state}

  def handle_call(:cancel, from, state) do
    :ok = state.amqp.cancel(state.chan, state.tag)
    Status.set_consuming(false)
    {:noreply, %{state | tag: nil, cancelling: from}}
  end

  def handle_call(:requeue_all, _from, %{chan: nil} = state), do: {:reply, :ok, state}

  def handle_call(:requeue_all, _from, state) do
    :ok = state.amqp.requeue_all(state.chan)
    InFlight.reset()
    {:reply, :ok, state}
  end

  @impl true
  def handle_info(:subscribe, %{chan: nil} = state) do
    if Status.draining?() do
      {:noreply, state}
    else
      subscribe(state)
    end
  end

  def handle_info({:EXIT, chan, reason}, %{chan: chan} = state),
    do: {:stop, {:channel_closed, reason}, state}

  def handle_info({:EXIT, _other, _reason}, state), do: {:noreply, state}

  def handle_info(message, state) do
    case state.amqp.classify(message) do
      {:deliver, payload, meta} -> {:noreply, dispatch(payload, meta, state)}
      :cancel_ok -> {:noreply, cancelled(state)}
      :cancelled -> {:stop, :consumer_cancelled, state}
      _ -> {:noreply, state}
    end
  end

  @impl true
  def terminate(_reason, _state), do: Status.set_consuming(false)

  defp cancelled(%{cancelling: nil} = state), do: state

  defp cancelled(state) do
    GenServer.reply(state.cancelling, :ok)
    %{state | cancelling: nil}
  end

  defp subscribe(state) do
    case Connection.open_channel(state.connection) do
      {:ok, chan} ->
        # Linked both ways: if this process dies (even by :kill) the channel closes and
        # the broker requeues its unacked deliveries; if the channel dies, so does this.
        Process.link(chan)
        InFlight.reset()
        {:ok, tag} = state.amqp.consume(chan, state.queue, state.prefetch)
        Status.set_consuming(true)
        {:noreply, %{state | chan: chan, tag: tag}}

      {:error, _} ->
        Process.send_after(self(), :subscribe, @retry_ms)
        {:noreply, state}
    end
  end

  defp dispatch(payload, meta, state) do
    if meta.redelivered, do: Metrics.redelivery()
    InFlight.add(1)

    message = %Message{
      payload: payload,
      reply_to: meta.reply_to,
      correlation_id: meta.correlation_id,
      user_id: Map.get(meta, :user_id),
      acknowledger: {ReplyPublisher, {state.amqp, state.chan}, meta.delivery_tag},
      redelivered: meta.redelivered,
      received_at: System.monotonic_time(:microsecond),
      deadline: Map.get(meta, :deadline)
    }

    Processor.handle(rem(state.next, state.processors), message)
    %{state | next: state.next + 1}
  end
end
