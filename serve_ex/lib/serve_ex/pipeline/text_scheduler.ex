defmodule ServeEx.Pipeline.TextScheduler do
  @moduledoc """
  Continuous batching of one GPT. Requests wait in a queue; between two decoding steps
  the scheduler lets them join the model's decoding batch (`ServeEx.Engine.join/2`), up
  to `MAX_SEQUENCES` live, and each step (`ServeEx.Engine.step/1`) gives every live
  sequence its next token, with one GEMM per dense layer over all of them. A sequence
  leaves the moment its text ends (`max_new_tokens`, or a stop string), and its reply,
  or its stream's last frame, goes out then: nobody waits for the longest text of a
  batch. A streamed text sends a frame every few tokens (`ServeEx.Pipeline.TextSequence`).

  Each text is the one the engine gives the request alone, bit for bit, whatever joins
  or leaves beside it: the engine's kernels give each row the same bits whatever the
  batch, and each sequence samples with its own RNG.

  Between steps, each live sequence is checked: one whose deadline passed, or whose
  HTTP caller is gone (monitored), leaves the batch, and the others go on.

  **A crash inside a step** (the engine raised or failed) is attributed as a batch's
  is: every live sequence runs again alone, from its first token
  (`ServeEx.Engine.generate_text_batch/2`), so the innocent ones are answered with the
  same text and only the guilty one fails (`ServeEx.Pipeline.FailurePolicy` decides
  what then). A stream that already sent frames skips their repeats
  (`ServeEx.StreamCursor`). The next step runs on a new batch.

  **Hot swap.** The batch runs on the model version it was made with. When the
  registry holds a newer one, no request joins until the live sequences have ended;
  the next batch is made on the new version.

  **Lanes.** A model has two schedulers, each with its own decoding batch, and the two
  run at once on two dirty CPU schedulers. A text whose prompt and new tokens fit in
  the model's block with at most #{64} new tokens goes to the `:short` lane; any other
  to the `:long` lane. Past the block, each token re-prefills the whole window, so one
  long text makes every step of its batch cost a prefill: a short text that shared
  its steps would wait as long per token.

  **Admission** (`ServeEx.Admission`, key `{model, {:text, lane}}`) counts the
  requests of a lane waiting or live, one each; the processors shed `overloaded` past
  `MAX_QUEUED_ROWS` of them.
  """
  use GenServer
  require Logger

  alias ServeEx.{Acknowledger, Admission, Deadline, Engine, Metrics, ModelRegistry, Reply}
  alias ServeEx.Pipeline.TextSequence

  @late Reply.error(:deadline_exceeded, "the request's deadline passed before it was computed")

  # The most new tokens of a short text.
  @short_tokens 64

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, [:model, :max_sequences, lane: :long, engine: Engine])
    GenServer.start_link(__MODULE__, opts, name: name(opts[:model].id, opts[:lane]))
  end

  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts),
    do: %{
      id: {__MODULE__, opts[:model].id, Keyword.get(opts, :lane, :long)},
      start: {__MODULE__, :start_link, [opts]}
    }

  @doc "A text model's lanes, each a scheduler of its own."
  @spec lanes() :: [:short | :long]
  def lanes, do: [:short, :long]

  @doc """
  The lane of a `generate_text` request: `:short` when its prompt and new tokens fit
  in the model's block and it asks for at most #{@short_tokens} new tokens.
  """
  @spec lane(ServeEx.Request.t()) :: :short | :long
  def lane(%{model: model, args: args}) do
    # a token is a character (a code point) of a character-level model
    prompt = args.prompt |> String.to_charlist() |> length()
    fits = prompt + args.max_new_tokens <= model.config["block_size"]
    if fits and args.max_new_tokens <= @short_tokens, do: :short, else: :long
  end

  @doc "The admission key of a text model's lane."
  @spec admission_key(String.t(), :short | :long) :: Admission.key()
  def admission_key(model_id, lane), do: {model_id, {:text, lane}}

  @doc "Queues a validated `generate_text` message on its model's scheduler for its lane."
  @spec add(ServeEx.Message.t()) :: :ok
  def add(message),
    do: GenServer.cast(name(message.model_id, lane(message.request)), {:add, message})

  defp name(id, lane), do: {:via, Registry, {ServeEx.Pipeline.Registry, {:text, id, lane}}}

  @impl true
  def init(opts) do
    model = opts[:model]
    Admission.reset(admission_key(model.id, opts[:lane]))

    state = %{
      lane: opts[:lane],
      model: model,
      engine: opts[:engine],
      max_sequences: opts[:max_sequences],
      batch: nil,
      waiting: :queue.new(),
      # sequence id => %{message, request, seq: TextSequence, last_us}
      live: %{},
      # monitor ref of an HTTP caller => its sequence id
      callers: %{},
      stepping: false,
      step_ms: 1
    }

    {:ok, new_batch(state)}
  end

  defp new_batch(state) do
    {:ok, batch} = state.engine.decoding_batch(state.model, max_sequences: state.max_sequences)
    %{state | batch: batch}
  end

  @impl true
  def handle_cast({:add, message}, state),
    do: {:noreply, kick(%{state | waiting: :queue.in(message, state.waiting)})}

  @impl true
  def handle_info(:step, state) do
    state = state |> admit() |> expire()

    if state.live == %{} do
      Metrics.decoding_step(state.model.id, 0, :queue.len(state.waiting))
      {:noreply, %{state | stepping: false}}
    else
      send(self(), :step)
      {:noreply, step(state)}
    end
  end

  # an HTTP caller hung up: its sequence leaves, the others go on
  def handle_info({:DOWN, ref, :process, _pid, _reason}, state) do
    case Map.pop(state.callers, ref) do
      {nil, _callers} ->
        {:noreply, state}

      {id, callers} ->
        state = %{state | callers: callers}
        _ = state.engine.leave(state.batch, id)

        {:noreply,
         settle(state, id, {:reply, Reply.error(:internal, "the caller is gone"), :cancelled})}
    end
  end

  # The next step goes behind the requests already in the mailbox, so they can join it.
  defp kick(%{stepping: true} = state), do: state

  defp kick(state) do
    send(self(), :step)
    %{state | stepping: true}
  end

  # Waiting requests join while there is room; a late one, or one whose caller is gone,
  # is answered without joining. A newer model version waits for an empty batch.
  defp admit(state) do
    state = maybe_swap(state)

    with true <-
           map_size(state.live) < state.max_sequences and
             state.model.version == ModelRegistry.current(state.model).version,
         {{:value, message}, waiting} <- :queue.out(state.waiting) do
      admit(join(%{state | waiting: waiting}, message))
    else
      _ -> state
    end
  end

  defp maybe_swap(%{live: live} = state) when live == %{} do
    model = ModelRegistry.current(state.model)
    if model.version != state.model.version, do: new_batch(%{state | model: model}), else: state
  end

  defp maybe_swap(state), do: state

  defp join(state, message) do
    cond do
      Deadline.passed?(message.deadline) ->
        release(state, message, {:reply, @late, :deadline_exceeded})

      not caller_alive?(message) ->
        release(
          state,
          message,
          {:reply, Reply.error(:internal, "the caller is gone"), :cancelled}
        )

      true ->
        request = text_request(message)

        case state.engine.join(state.batch, request) do
          {:ok, id} ->
            Metrics.queue_time(state.model.id, now_us() - message.received_at)
            message = %{message | model_version: state.model.version}
            entry = %{message: message, seq: TextSequence.new(stops(message)), last_us: nil}
            state = %{state | live: Map.put(state.live, id, entry)}
            watch_caller(state, message, id)

          {:error, {code, text}} ->
            release(state, message, outcome(message, {:error, {code, text}}))
        end
    end
  end

  defp watch_caller(state, message, id) do
    case Acknowledger.caller(message) do
      nil -> state
      pid -> %{state | callers: Map.put(state.callers, Process.monitor(pid), id)}
    end
  end

  defp caller_alive?(message) do
    case Acknowledger.caller(message) do
      nil -> true
      pid -> Process.alive?(pid)
    end
  end

  # Live sequences whose deadline passed leave the batch.
  defp expire(state) do
    late = for {id, %{message: m}} <- state.live, Deadline.passed?(m.deadline), do: id

    Enum.reduce(late, state, fn id, state ->
      _ = state.engine.leave(state.batch, id)
      %{message: message, seq: seq} = state.live[id]
      error = {:deadline_exceeded, "stopped after #{seq.tokens} new tokens: the deadline passed"}
      settle(state, id, outcome(message, {:error, error}))
    end)
  end

  defp step(state) do
    started = now_us()
    Metrics.decoding_step(state.model.id, map_size(state.live), :queue.len(state.waiting))

    result =
      try do
        state.engine.step(state.batch)
      catch
        kind, reason -> {:error, {:internal, Exception.format(kind, reason, __STACKTRACE__)}}
      end

    case result do
      {:ok, emitted} ->
        state = %{state | step_ms: max(div(now_us() - started, 1000), 1)}
        Metrics.compute_time(state.model.id, now_us() - started)
        Enum.reduce(emitted, state, &token/2)

      {:error, {_code, text}} ->
        recover(state, text)
    end
  end

  # One new token of a live sequence.
  defp token({id, text, finished}, state) do
    entry = state.live[id]
    now = now_us()

    if entry.last_us,
      do: Metrics.token(state.model.id, :next, now - entry.last_us),
      else: Metrics.token(state.model.id, :first, now - entry.message.received_at)

    case TextSequence.add(entry.seq, text) do
      {:stop, seq, chunk} ->
        stream(entry.message, chunk)
        if not finished, do: _ = state.engine.leave(state.batch, id)
        finish(put_in(state.live[id], %{entry | seq: seq}), id, :stop)

      {:more, seq, chunk} ->
        stream(entry.message, chunk)
        state = put_in(state.live[id], %{entry | seq: seq, last_us: now})
        if finished, do: finish(state, id, :length), else: state
    end
  end

  defp finish(state, id, finish_reason) do
    %{message: message, seq: seq} = state.live[id]
    {_seq, chunk} = TextSequence.rest(seq)
    stream(message, chunk)
    settle(state, id, outcome(message, {:ok, seq, finish_reason}))
  end

  # A step crashed: every live sequence runs again alone, so that only the guilty one
  # fails; the next step runs on a new batch.
  defp recover(state, reason) do
    Logger.error(
      "a decoding step of model #{state.model.id} with #{map_size(state.live)} sequences " <>
        "failed; running each again alone: #{reason}"
    )

    entries = state.live
    Enum.each(Map.keys(state.callers), &Process.demonitor(&1, [:flush]))
    state = new_batch(%{state | live: %{}, callers: %{}})

    Enum.reduce(entries, state, fn {_id, %{message: message}}, state ->
      release(state, message, run_alone(state.model, message, state.engine))
    end)
  end

  @doc """
  Runs one `generate_text` message alone, from its first token, with the engine's
  one-request path, and gives its outcome: what a crashed step falls back to, and what
  a request's validation by the engine looks like. A stream gets its frames as a
  decoding batch would cut them, after a restart (`ServeEx.StreamCursor` skips the
  repeats of frames already sent).
  """
  @spec run_alone(Engine.t(), ServeEx.Message.t(), module()) ::
          ServeEx.Pipeline.FailurePolicy.outcome()
  def run_alone(model, message, engine \\ Engine) do
    restart_stream(message)
    request = text_request(message)

    case engine.generate_text_batch(model, [%{request | stream: nil}]) do
      [{:ok, text}] -> replay(message, request.prompt, text)
      [error] -> outcome(message, error)
    end
  catch
    kind, reason -> {:failed, Exception.format_banner(kind, reason)}
  end

  # The alone run's text through the same per-token path as a step's tokens (one token
  # is one character of a character-level model).
  defp replay(message, prompt, text) do
    new = binary_part(text, byte_size(prompt), byte_size(text) - byte_size(prompt))
    start = {TextSequence.new(stops(message)), :length}

    {seq, reason} =
      Enum.reduce_while(String.codepoints(new), start, fn t, {seq, _reason} ->
        case TextSequence.add(seq, t) do
          {:stop, seq, chunk} ->
            stream(message, chunk)
            {:halt, {seq, :stop}}

          {:more, seq, chunk} ->
            stream(message, chunk)
            {:cont, {seq, :length}}
        end
      end)

    {_seq, chunk} = TextSequence.rest(seq)
    stream(message, chunk)
    outcome(message, {:ok, seq, reason})
  end

  # A sequence ended (or left): it is answered, its caller unwatched, its count released.
  defp settle(state, id, outcome) do
    {%{message: message}, live} = Map.pop(state.live, id)
    {refs, callers} = Enum.split_with(state.callers, fn {_ref, seq} -> seq == id end)
    Enum.each(refs, fn {ref, _} -> Process.demonitor(ref, [:flush]) end)
    release(%{state | live: live, callers: Map.new(callers)}, message, outcome)
  end

  defp release(state, message, outcome) do
    Acknowledger.settle([{message, outcome}])
    Admission.release(admission_key(state.model.id, state.lane), 1, state.step_ms)
    state
  end

  defp outcome(message, {:ok, seq, finish_reason}) do
    if message.request.args.stream,
      do: {:reply, {:stream_end, message.acknowledger, finish_reason}, :ok},
      else:
        {:reply, Reply.text(message.request.args.prompt <> seq.text, finish_reason, seq.tokens),
         :ok}
  end

  # a file the engine refuses is the service's failure, not the client's
  defp outcome(message, {:error, {:bad_model, text}}),
    do: outcome(message, {:error, {:internal, text}})

  defp outcome(message, {:error, {code, text}}) do
    if message.request.args.stream,
      do: {:reply, {:stream_end, message.acknowledger, {code, text}}, code},
      else: {:reply, Reply.error(code, text), code}
  end

  defp text_request(message) do
    a = message.request.args

    Engine.text_request(a.prompt, a.max_new_tokens,
      temperature: a.temperature,
      top_k: a.top_k,
      seed: a.seed || stream_seed(message),
      deadline_ms: message.deadline,
      waiter: Acknowledger.caller(message)
    )
  end

  defp stops(message), do: message.request.args.stop

  # The same for every delivery of a request, so a stream restarted after a redelivery
  # sends the same frames.
  defp stream_seed(%{correlation_id: cid, payload: payload}) when is_binary(cid),
    do: :erlang.phash2({cid, payload}, 4_294_967_296)

  # without a correlation id: the same for a retry within this node (the delivery, or
  # the HTTP request, is the same), and another for any other request
  defp stream_seed(%{payload: payload, acknowledger: acknowledger}),
    do: :erlang.phash2({payload, acknowledger}, 4_294_967_296)

  defp stream(_message, nil), do: :ok

  defp stream(%{request: %{args: %{stream: true}}} = message, chunk) do
    {pid, tag} = Acknowledger.stream_target(message)
    send(pid, {:stream_chunk, tag, chunk})
    :ok
  end

  defp stream(_message, _chunk), do: :ok

  # A stream's frames so far came from a run that is repeated from its first token.
  defp restart_stream(%{request: %{args: %{stream: true}}} = message) do
    {pid, tag} = Acknowledger.stream_target(message)
    send(pid, {:stream_restart, tag})
  end

  defp restart_stream(_message), do: :ok

  defp now_us, do: System.monotonic_time(:microsecond)
end
