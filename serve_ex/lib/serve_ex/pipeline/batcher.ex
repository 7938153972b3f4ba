defmodule ServeEx.Pipeline.Batcher do
  @moduledoc """
  One batcher per model. It gathers requests until their rows reach `batch_size` or
  the oldest has waited `batch_timeout_ms`, then runs `handle_batch`: one engine call
  per op present in the batch (inline or on a dirty CPU scheduler, as
  `ServeEx.Engine.runs_inline?/2` says), and one reply per request. A crash inside a batch is attributed to the request that caused
  it: the batch runs again one request at a time, the innocent ones are answered, and
  only the guilty one fails (`ServeEx.Pipeline.FailurePolicy` decides what then).
  """
  use GenServer
  require Logger

  alias ServeEx.{Admission, Deadline, Engine, Metrics, Reply}
  alias ServeEx.Pipeline.{FailurePolicy, ReplyPublisher}

  @late_reply Reply.error(
                :deadline_exceeded,
                "the request's deadline passed before its batch ran"
              )

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, [:model, :batch_size, :batch_timeout_ms, lane: :short])
    GenServer.start_link(__MODULE__, opts, name: name(opts[:model].id, opts[:lane]))
  end

  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    lane = Keyword.get(opts, :lane, :short)
    %{id: {__MODULE__, opts[:model].id, lane}, start: {__MODULE__, :start_link, [opts]}}
  end

  # Text generation longer than this many new tokens runs in the model's long lane.
  @short_tokens 64

  @doc """
  The lanes of a model: a GPT has two batchers, so that a short request never waits
  behind a long generation (up to `max_new_tokens` 1,024 costs seconds); the other
  models have one.
  """
  @spec lanes(ServeEx.Engine.t()) :: [:short | :long]
  def lanes(%{arch: :gpt}), do: [:short, :long]
  def lanes(_model), do: [:short]

  @doc "The admission keys of a model: one per lane (`ServeEx.Admission`)."
  @spec admission_keys(ServeEx.Engine.t()) :: [ServeEx.Admission.key()]
  def admission_keys(model), do: for(lane <- lanes(model), do: {model.id, lane})

  @doc "The admission key of a validated message: its model's lane for it."
  @spec admission_key(ServeEx.Message.t()) :: ServeEx.Admission.key()
  def admission_key(message), do: {message.model_id, lane(message.request)}

  @doc "Queues a validated message on its model's batcher."
  @spec add(ServeEx.Message.t()) :: :ok
  def add(message),
    do: GenServer.cast(name(message.model_id, lane(message.request)), {:add, message})

  defp lane(%{op: "generate_text", args: %{max_new_tokens: n}}) when n > @short_tokens, do: :long
  defp lane(_request), do: :short

  defp name(id, lane), do: {:via, Registry, {ServeEx.Pipeline.Registry, {:batcher, id, lane}}}

  @impl true
  def init(opts) do
    Admission.reset({opts[:model].id, opts[:lane]})

    {:ok,
     %{
       model: opts[:model],
       lane: opts[:lane],
       size: opts[:batch_size],
       timeout: opts[:batch_timeout_ms],
       pending: [],
       rows: 0,
       timer: nil
     }}
  end

  @impl true
  def handle_cast({:add, message}, state) do
    state = %{state | pending: [message | state.pending], rows: state.rows + message.request.rows}

    cond do
      state.rows >= state.size ->
        {:noreply, flush(state)}

      state.timer == nil ->
        {:noreply, %{state | timer: start_timer(state.timeout)}}

      true ->
        {:noreply, state}
    end
  end

  # The timer's message carries its own ref: a timeout that fires after its batch was
  # flushed by size is stale and must not flush the next batch early.
  @impl true
  def handle_info({:timeout, ref}, %{timer: {ref, _}} = state),
    do: {:noreply, flush(%{state | timer: nil})}

  def handle_info({:timeout, _stale}, state), do: {:noreply, state}

  # A zero timeout is a message to self, behind every request already in the mailbox:
  # the batch takes in what is waiting, then flushes. (Timers have millisecond ticks.)
  defp start_timer(0) do
    ref = make_ref()
    send(self(), {:timeout, ref})
    {ref, nil}
  end

  defp start_timer(ms) do
    ref = make_ref()
    {ref, Process.send_after(self(), {:timeout, ref}, ms)}
  end

  defp flush(%{pending: []} = state), do: state

  # Requests whose deadline passed while they waited are answered deadline_exceeded
  # without compute; the rest run as one batch. Their rows are released from the
  # model's admission count once settled.
  defp flush(state) do
    with {_ref, timer} when is_reference(timer) <- state.timer, do: Process.cancel_timer(timer)
    started = System.monotonic_time(:microsecond)

    {late, due} =
      state.pending |> Enum.reverse() |> Enum.split_with(&Deadline.passed?(&1.deadline))

    id = state.model.id
    Enum.each(due, &Metrics.queue_time(id, started - &1.received_at))
    ReplyPublisher.settle(Enum.map(late, &{&1, {:reply, @late_reply, :deadline_exceeded}}))

    if due != [] do
      # the model's current version: a swap takes effect from the next batch on
      model = current(state.model)
      Metrics.batch(Enum.sum(Enum.map(due, & &1.request.rows)))
      due = Enum.map(due, &%{&1 | model_version: model.version})
      ReplyPublisher.settle(run_isolated(model, due))
    end

    compute_us = System.monotonic_time(:microsecond) - started
    Metrics.compute_time(id, compute_us)
    Admission.release({id, state.lane}, state.rows, div(compute_us, 1000))
    %{state | pending: [], rows: 0, timer: nil}
  end

  defp current(model) do
    case ServeEx.ModelRegistry.lookup(model.id) do
      {:ok, now} -> now
      :error -> model
    end
  end

  # One engine call for the batch; if it raises, one call per request, so the failure
  # lands on the request that caused it.
  defp run_isolated(model, messages) do
    handle_batch(model, messages)
  catch
    kind, reason ->
      Logger.error(
        "batch of #{length(messages)} on model #{model.id} failed; retrying one by one: " <>
          Exception.format(kind, reason, __STACKTRACE__)
      )

      Enum.each(messages, &restart_stream/1)
      Enum.flat_map(messages, &run_alone(model, &1))
  end

  # A streamed request's chunks so far came from the run that failed; the one-by-one run
  # repeats them, and whoever numbers the frames must skip the repeats.
  defp restart_stream(%{request: %{args: %{stream: true}}} = message) do
    with {pid, tag} <- stream_target(message), do: send(pid, {:stream_restart, tag})
  end

  defp restart_stream(_message), do: :ok

  defp run_alone(model, message) do
    handle_batch(model, [message])
  catch
    kind, reason -> [{message, {:failed, Exception.format_banner(kind, reason)}}]
  end

  @doc "Runs `messages` through `model`, one engine call per op; one outcome per message."
  @spec handle_batch(Engine.t(), [ServeEx.Message.t()]) :: [
          {ServeEx.Message.t(), FailurePolicy.outcome()}
        ]
  def handle_batch(model, messages) do
    messages
    |> Enum.group_by(& &1.request.op)
    |> Enum.flat_map(fn {op, group} -> Enum.zip(group, run(model, op, group)) end)
    |> Enum.map(fn {message, result} -> {message, outcome(result, message)} end)
  end

  defp run(model, "generate", messages),
    do:
      Engine.generate_batch(
        model,
        Enum.map(messages, &{args(&1).n, args(&1).seed, args(&1).encoding})
      )

  defp run(model, "decode", messages),
    do:
      Engine.decode_batch(model, Enum.map(messages, &f32_rows(args(&1).rows, args(&1).encoding)))

  defp run(model, "encode", messages),
    do:
      Engine.encode_batch(model, Enum.map(messages, &f32_rows(args(&1).rows, args(&1).encoding)))

  defp run(model, "generate_text", messages) do
    requests =
      for m <- messages, a = args(m) do
        Engine.text_request(a.prompt, a.max_new_tokens,
          temperature: a.temperature,
          top_k: a.top_k,
          seed: a.seed || stream_seed(m),
          deadline_ms: m.deadline,
          stream: if(a.stream, do: stream_target(m)),
          waiter: waiter(m)
        )
      end

    Engine.generate_text_batch(model, requests)
  end

  defp args(message), do: message.request.args

  # The same for every delivery of a request, so a stream restarted after a redelivery
  # sends the same frames.
  defp stream_seed(%{correlation_id: cid, payload: payload}) when is_binary(cid),
    do: :erlang.phash2({cid, payload}, 4_294_967_296)

  # without a correlation id: the same for a retry within this node (the delivery, or
  # the HTTP request, is the same), and another for any other request
  defp stream_seed(%{payload: payload, acknowledger: acknowledger}),
    do: :erlang.phash2({payload, acknowledger}, 4_294_967_296)

  # Where the engine sends a stream's chunks: the HTTP handler that waits for it, or the
  # reply publisher, which numbers them and publishes each as a frame (with no publisher
  # running, as in a batcher tested alone, only the last frame goes out).
  defp stream_target(%{acknowledger: {:http, pid, ref}}), do: {pid, ref}

  defp stream_target(m) do
    case Process.whereis(ReplyPublisher) do
      nil -> nil
      pid -> {pid, {m.acknowledger, m.reply_to, m.correlation_id}}
    end
  end

  # The HTTP handler that waits for the reply: a generation stops once it hangs up.
  defp waiter(%{acknowledger: {:http, pid, _ref}}), do: pid
  defp waiter(_message), do: nil

  defp f32_rows([first | _] = rows, encoding) do
    {for(row <- rows, v <- row, into: <<>>, do: <<v::float-32-little>>), length(first), encoding}
  end

  # A stream's last frame is numbered by whoever published the frames before it.
  # a file the engine refuses is the service's failure, not the client's
  defp outcome({:error, {:bad_model, text}}, message),
    do: outcome({:error, {:internal, text}}, message)

  defp outcome(result, %{request: %{args: %{stream: true}}} = message) do
    case result do
      {:ok, _text} ->
        {:reply, {:stream_end, message.acknowledger, nil}, :ok}

      {:error, {code, text}} ->
        {:reply, {:stream_end, message.acknowledger, {code, text}}, code}
    end
  end

  defp outcome(result, %{request: request}), do: outcome(result, request.op, request.args)

  defp outcome({:ok, text}, "generate_text", _args), do: {:reply, Reply.text(text), :ok}

  defp outcome({:ok, {mu, logvar}}, "encode", %{encoding: encoding}),
    do: {:reply, Reply.posterior(mu, logvar, encoding), :ok}

  defp outcome({:ok, tensor}, _op, %{encoding: encoding}),
    do: {:reply, Reply.tensor(tensor, encoding), :ok}

  defp outcome({:error, {code, text}}, _op, _args), do: {:reply, Reply.error(code, text), code}
end
