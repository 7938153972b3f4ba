defmodule ServeEx.Pipeline.Acknowledger do
  @moduledoc """
  The reply publisher and acknowledger. For each settled message it publishes the
  reply to `reply_to` with the request's `correlation_id` on its own channel in
  publisher-confirm mode, waits for the broker's confirms, and only then acks the
  delivery on the channel that received it.

  Failure policy:
  - a reply (a result, or an error reply for invalid input) is acked: invalid input is
    never requeued;
  - a failed message (a crash while handling it) is requeued once; failing again on
    its redelivery, it gets an `internal` error reply and is rejected without requeue,
    so it lands in the dead-letter queue (`ServeEx.Topology`) and is not retried forever;
  - a message without `reply_to` cannot be answered and is dead-lettered;
  - if the broker does not confirm the replies, their deliveries are requeued: the
    client may see a duplicate reply, never a missing one.
  """
  use GenServer
  require Logger

  alias ServeEx.{AMQP, Connection, Metrics, Reply}

  @type outcome :: {:reply, iodata(), atom()} | {:failed, String.t()} | {:dead, String.t()}

  @confirm_timeout_ms 5_000
  @retry_ms 200

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, connection: Connection)
    GenServer.start_link(__MODULE__, opts, name: __MODULE__)
  end

  @doc "Settles messages: publish their replies, await confirms, then ack or reject."
  @spec settle([{ServeEx.Message.t(), outcome()}]) :: :ok
  def settle(outcomes), do: GenServer.cast(__MODULE__, {:settle, outcomes})

  @impl true
  def init(opts) do
    send(self(), :open)
    {:ok, %{connection: opts[:connection], chan: nil, waiting: []}}
  end

  @impl true
  def handle_info(:open, state) do
    with {:ok, chan} <- Connection.open_channel(state.connection),
         :ok <- AMQP.impl().confirm_select(chan) do
      # linked: the channel lives and dies with this process
      Process.link(chan)
      Enum.each(Enum.reverse(state.waiting), &settle/1)
      {:noreply, %{state | chan: chan, waiting: []}}
    else
      _ ->
        Process.send_after(self(), :open, @retry_ms)
        {:noreply, state}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def handle_cast({:settle, outcomes}, %{chan: nil} = state) do
    {:noreply, %{state | waiting: [outcomes | state.waiting]}}
  end

  def handle_cast({:settle, outcomes}, state) do
    outcomes = Enum.map(outcomes, &decide/1)

    for {message, {:publish, body, _label}, _settle} <- outcomes do
      AMQP.impl().publish(state.chan, message.reply_to, body, message.correlation_id)
    end

    confirmed = AMQP.impl().wait_for_confirms(state.chan, @confirm_timeout_ms)

    unless confirmed,
      do: Logger.warning("replies not confirmed by the broker; requeueing their requests")

    for {message, action, settle} <- outcomes do
      finish(message, action, if(confirmed, do: settle, else: :requeue))
    end

    {:noreply, state}
  end

  # {message, what to publish (or :nothing), how to settle the delivery}
  defp decide({message, {:reply, body, label}}), do: {message, {:publish, body, label}, :ack}

  defp decide({message, {:failed, reason}}) do
    if message.redelivered do
      Logger.error("request failed twice, dead-lettering it: #{reason}")
      body = Reply.error(:internal, "the service failed on this request twice: #{reason}")
      {message, {:publish, body, :dead_lettered}, :dead_letter}
    else
      {message, :nothing, :requeue}
    end
  end

  defp decide({message, {:dead, reason}}) do
    Logger.error("dead-lettering a request: #{reason}")
    {message, :nothing, :dead_letter}
  end

  defp finish(%{acknowledger: {impl, chan, tag}} = message, action, settle) do
    case settle do
      :ack -> impl.ack(chan, tag)
      :requeue -> impl.reject(chan, tag, true)
      :dead_letter -> impl.reject(chan, tag, false)
    end

    label =
      case {action, settle} do
        {_, :requeue} -> :retried
        {{:publish, _, label}, _} -> label
        {:nothing, :dead_letter} -> :dead_lettered
      end

    Metrics.request(message.model_id, label, message.received_at)
  end
end
