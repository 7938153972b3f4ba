defmodule ServeEx.Pipeline.ReplyPublisher do
  @moduledoc """
  The reply publisher: the one process that publishes replies and settles deliveries.
  For each settled message it publishes the reply to `reply_to` with the request's
  `correlation_id`, on its own channel of the reply connection (not the one that
  consumes), in publisher-confirm mode and with `mandatory` set, and acks the delivery
  (on the channel that received it) only when the broker has confirmed the reply.
  Confirms come back asynchronously, keyed by the publish sequence number, so many
  replies are in flight at once.

  What to publish and how to settle is `ServeEx.Pipeline.FailurePolicy`'s to decide;
  this process carries it out, and handles what only the broker's answers reveal:
  - a reply no queue took (the broker returns it) is counted and logged as
    `unroutable`, and its request acked: its client is gone;
  - a reply the broker refuses (nack) is never recomputed: its request is
    dead-lettered and counted `reply_refused`;
  - if the reply channel dies with replies unconfirmed, the consumer's deliveries are
    untouched: those replies are published again on a new channel, once. A reply
    unconfirmed at two channel deaths is taken for the cause (a name the broker chokes
    on) and quarantined: its request is dead-lettered, never computed again.
  """
  use GenServer
  require Logger

  @behaviour ServeEx.Acknowledger

  alias ServeEx.{Connection, InFlight, Metrics, StreamCursor}
  alias ServeEx.Pipeline.FailurePolicy

  @retry_ms 200

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, [:amqp, connection: ServeEx.ReplyConnection])
    GenServer.start_link(__MODULE__, opts, name: __MODULE__)
  end

  @doc """
  Settles AMQP deliveries (`ServeEx.Acknowledger`): publishes their replies, awaits the
  confirms, then acks or rejects.
  """
  @impl ServeEx.Acknowledger
  def settle(outcomes), do: GenServer.cast(__MODULE__, {:settle, outcomes})

  @doc """
  A stream's chunks come here (`ServeEx.Acknowledger`): numbered, each is published
  at once as the stream's next frame.
  """
  @impl ServeEx.Acknowledger
  def stream_target(message),
    do: {__MODULE__, {message.acknowledger, message.reply_to, message.correlation_id}}

  @doc "A delivery's publisher does not wait for its reply (`ServeEx.Acknowledger`)."
  @impl ServeEx.Acknowledger
  def caller(_message), do: nil

  @impl true
  def init(opts) do
    send(self(), :open)

    {:ok,
     %{
       connection: opts[:connection],
       amqp: Keyword.fetch!(opts, :amqp),
       chan: nil,
       monitor: nil,
       waiting: [],
       pending: %{},
       next_seqno: 1,
       # stream key => its ServeEx.StreamCursor
       streams: %{}
     }}
  end

  @impl true
  def handle_info(:open, %{chan: nil} = state) do
    with {:ok, chan} <- Connection.open_channel(state.connection),
         :ok <- state.amqp.confirm_select(chan, self()) do
      # monitored, not linked: a broker-side close of the reply path costs a new
      # channel, not the consumer's deliveries
      state = %{state | chan: chan, monitor: Process.monitor(chan), next_seqno: 1}
      {:noreply, Enum.reduce(Enum.reverse(state.waiting), %{state | waiting: []}, &publish/2)}
    else
      _ ->
        Process.send_after(self(), :open, @retry_ms)
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, _chan, reason}, %{monitor: ref} = state) do
    unconfirmed = state.pending |> Enum.sort() |> Enum.map(&elem(&1, 1))

    Logger.warning(
      "reply channel closed (#{inspect(reason, limit: 5)}) with #{length(unconfirmed)} replies unconfirmed"
    )

    {quarantined, again} = Enum.split_with(unconfirmed, &(&1.attempts >= 1))

    for entry <- quarantined do
      Logger.error("quarantining a request whose reply was unconfirmed at two channel closes")
      finish(entry.message, :dead_letter, :quarantined)
    end

    retry = for entry <- again, do: %{entry | attempts: entry.attempts + 1}
    send(self(), :open)

    {:noreply,
     %{
       state
       | chan: nil,
         monitor: nil,
         pending: %{},
         waiting: Enum.reverse(retry) ++ state.waiting
     }}
  end

  # A chunk of a streamed text, sent by the engine while it generates: published at
  # once as the stream's next frame; it settles nothing.
  def handle_info({:stream_chunk, {key, reply_to, correlation_id}, text}, state) do
    {frame, cursor} = StreamCursor.frame(Map.get(state.streams, key, %StreamCursor{}), text)
    state = %{state | streams: Map.put(state.streams, key, cursor)}

    case frame do
      nil ->
        {:noreply, state}

      {_seq, body} ->
        to = %{reply_to: reply_to, correlation_id: correlation_id, model_version: nil}
        {:noreply, publish(entry(to, body, :frame, :none), state)}
    end
  end

  # The stream's generation runs again (its batch is retried): its repeated chunks are
  # skipped. (A stream that sent no chunk yet has no cursor, and needs none.)
  def handle_info({:stream_restart, {key, _reply_to, _correlation_id}}, state) do
    {:noreply, %{state | streams: Map.replace_lazy(state.streams, key, &StreamCursor.restart/1)}}
  end

  def handle_info(message, state) do
    case state.amqp.classify(message) do
      {:confirm, seqno, multiple, verdict} ->
        {:noreply, confirmed(state, seqno, multiple, verdict)}

      {:returned, seqno} ->
        {:noreply, returned(state, seqno)}

      _ ->
        {:noreply, state}
    end
  end

  @impl true
  def handle_cast({:settle, outcomes}, state) do
    {:noreply, Enum.reduce(outcomes, state, &settle_one/2)}
  end

  # A settled request's stream, if it had one, is over whatever the outcome: its cursor
  # goes (a redelivery is a new delivery, with a stream of its own).
  defp settle_one({message, _outcome} = settled, state) do
    state = start_settling(FailurePolicy.decide(settled), state)
    %{state | streams: Map.delete(state.streams, message.acknowledger)}
  end

  # A reply is published now and its delivery settled when the broker confirms it;
  # confirms arrive asynchronously, so publishing never waits for them.
  defp start_settling({message, {:publish, {:stream_end, key, ending}, label}, settle}, state) do
    {cursor, streams} = Map.pop(state.streams, key, %StreamCursor{})
    {_seq, body} = StreamCursor.last(cursor, ending)
    start_settling({message, {:publish, body, label}, settle}, %{state | streams: streams})
  end

  defp start_settling({message, {:publish, body, label}, settle}, state),
    do: publish(entry(message, body, label, settle), state)

  defp start_settling({message, {:nothing, label}, settle}, state) do
    finish(message, settle, label)
    state
  end

  # a reply to publish, not yet tried on any channel
  defp entry(message, body, label, settle),
    do: %{
      message: message,
      body: body,
      label: label,
      settle: settle,
      attempts: 0,
      returned: false
    }

  defp publish(entry, %{chan: nil} = state), do: %{state | waiting: [entry | state.waiting]}

  defp publish(entry, state) do
    m = entry.message

    :ok =
      state.amqp.publish(
        state.chan,
        m.reply_to,
        entry.body,
        m.correlation_id,
        state.next_seqno,
        m.model_version
      )

    %{
      state
      | pending: Map.put(state.pending, state.next_seqno, entry),
        next_seqno: state.next_seqno + 1
    }
  end

  # The broker returns a mandatory publish no queue took, then confirms it.
  defp returned(state, seqno) do
    case state.pending do
      %{^seqno => entry} ->
        Logger.warning("a reply was unroutable: its reply queue does not exist")
        %{state | pending: Map.put(state.pending, seqno, %{entry | returned: true})}

      _ ->
        state
    end
  end

  # The broker confirmed (or refused) publish `seqno`, or every one up to it.
  defp confirmed(state, seqno, multiple, verdict) do
    done = if multiple, do: for({s, _} <- state.pending, s <= seqno, do: s), else: [seqno]

    if verdict == :nack,
      do:
        Logger.warning(
          "the broker refused #{length(done)} replies; dead-lettering their requests"
        )

    for s <- done, entry = state.pending[s] do
      case {verdict, entry.returned} do
        {:ack, false} -> finish(entry.message, entry.settle, entry.label)
        {:ack, true} -> finish(entry.message, :ack, :unroutable)
        {:nack, _} -> finish(entry.message, :dead_letter, :reply_refused)
      end
    end

    %{state | pending: Map.drop(state.pending, done)}
  end

  # a stream's chunk frame (published for no delivery of its own): nothing to settle
  defp finish(message, _settle, _label) when not is_map_key(message, :acknowledger), do: :ok

  # counted before it is settled, so that whoever sees the ack sees the count
  defp finish(%{acknowledger: {__MODULE__, {impl, chan}, tag}} = message, settle, label) do
    Metrics.request(message.model_id, label, message.received_at)

    case settle do
      :ack -> impl.ack(chan, tag)
      :requeue -> impl.reject(chan, tag, true)
      :dead_letter -> impl.reject(chan, tag, false)
    end

    InFlight.add(-1)
  end
end
