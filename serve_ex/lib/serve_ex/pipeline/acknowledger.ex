defmodule ServeEx.Pipeline.Acknowledger do
  @moduledoc """
  The reply publisher and acknowledger. For each settled message it publishes the
  reply to `reply_to` with the request's `correlation_id` on its own channel in
  publisher-confirm mode, and acks the delivery (on the channel that received it) only
  when the broker has confirmed the reply. Confirms come back asynchronously, keyed by
  the publish sequence number, so many replies are in flight at once.

  Failure policy:
  - a reply (a result, or an error reply for invalid input) is acked: invalid input is
    never requeued;
  - a failed message (a crash while handling it) is requeued once; failing again on
    its redelivery, it gets an `internal` error reply and is rejected without requeue,
    so it lands in the dead-letter queue (`ServeEx.Topology`) and is not retried forever;
  - a message without `reply_to` cannot be answered and is dead-lettered;
  - if the broker refuses (nacks) a reply, its delivery is requeued: the client may see
    a duplicate reply, never a missing one. If this process or its channel dies with
    replies unconfirmed, the pipeline restarts and the broker requeues those deliveries.
  """
  use GenServer
  require Logger

  alias ServeEx.{AMQP, Connection, Metrics, Reply}

  @type outcome :: {:reply, iodata(), atom()} | {:failed, String.t()} | {:dead, String.t()}

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
    {:ok, %{connection: opts[:connection], chan: nil, waiting: [], pending: %{}, next_seqno: 1}}
  end

  @impl true
  def handle_info(:open, state) do
    with {:ok, chan} <- Connection.open_channel(state.connection),
         :ok <- AMQP.impl().confirm_select(chan, self()) do
      # linked: the channel lives and dies with this process
      Process.link(chan)
      Enum.each(Enum.reverse(state.waiting), &settle/1)
      {:noreply, %{state | chan: chan, waiting: [], next_seqno: 1}}
    else
      _ ->
        Process.send_after(self(), :open, @retry_ms)
        {:noreply, state}
    end
  end

  def handle_info(message, state) do
    case AMQP.impl().classify(message) do
      {:confirm, seqno, multiple, verdict} ->
        {:noreply, confirmed(state, seqno, multiple, verdict)}

      _ ->
        {:noreply, state}
    end
  end

  # The broker confirmed (or refused) publish `seqno`, or every one up to it.
  defp confirmed(state, seqno, multiple, verdict) do
    done = if multiple, do: for({s, _} <- state.pending, s <= seqno, do: s), else: [seqno]

    if verdict == :nack,
      do: Logger.warning("the broker refused #{length(done)} replies; requeueing their requests")

    for s <- done, {message, action, settle} = state.pending[s] do
      finish(message, action, if(verdict == :ack, do: settle, else: :requeue))
    end

    %{state | pending: Map.drop(state.pending, done)}
  end

  @impl true
  def handle_cast({:settle, outcomes}, %{chan: nil} = state) do
    {:noreply, %{state | waiting: [outcomes | state.waiting]}}
  end

  def handle_cast({:settle, outcomes}, state) do
    {:noreply, Enum.reduce(outcomes, state, &start_settling(decide(&1), &2))}
  end

  # A reply is published now and its delivery settled when the broker confirms it;
  # confirms arrive asynchronously, so publishing never waits for them.
  defp start_settling({message, {:publish, body, _} = action, settle}, state) do
    :ok = AMQP.impl().publish(state.chan, message.reply_to, body, message.correlation_id)
    pending = Map.put(state.pending, state.next_seqno, {message, action, settle})
    %{state | pending: pending, next_seqno: state.next_seqno + 1}
  end

  defp start_settling({message, :nothing, settle}, state) do
    finish(message, :nothing, settle)
    state
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
