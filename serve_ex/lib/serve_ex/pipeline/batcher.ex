defmodule ServeEx.Pipeline.Batcher do
  @moduledoc """
  Batching, whatever the model (the role of Broadway's batcher stage): one batcher per
  model gathers requests until their rows reach `batch_size` or the oldest has waited
  `batch_timeout_ms`, then hands them to its handler's `c:handle_batch/2`, which does
  the model's work (`ServeEx.Pipeline.ImageBatch` for image models; a GPT's text has
  `ServeEx.Pipeline.TextScheduler`), and settles one outcome per request. Requests
  whose deadline passed while they waited are answered without compute. A crash inside
  a batch is attributed to the request that caused it: the batch runs again one request
  at a time, the innocent ones are answered, and only the guilty one fails
  (`ServeEx.Pipeline.FailurePolicy` decides what then).
  """
  use GenServer
  require Logger

  alias ServeEx.{Acknowledger, Admission, Deadline, Engine, Metrics, ModelRegistry, Reply}
  alias ServeEx.Pipeline.FailurePolicy

  @late_reply Reply.error(
                :deadline_exceeded,
                "the request's deadline passed before its batch ran"
              )

  @doc "The model's work on a batch: one outcome per message, in any order."
  @callback handle_batch(Engine.t(), [ServeEx.Message.t()]) :: [
              {ServeEx.Message.t(), FailurePolicy.outcome()}
            ]

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, [:model, :handler, :batch_size, :batch_timeout_ms])
    GenServer.start_link(__MODULE__, opts, name: name(opts[:model].id))
  end

  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts),
    do: %{id: {__MODULE__, opts[:model].id}, start: {__MODULE__, :start_link, [opts]}}

  @doc "The admission key of an image model's requests."
  @spec admission_key(String.t()) :: ServeEx.Admission.key()
  def admission_key(model_id), do: {model_id, :images}

  @doc "Queues a validated message on its model's batcher."
  @spec add(ServeEx.Message.t()) :: :ok
  def add(message), do: GenServer.cast(name(message.model_id), {:add, message})

  defp name(id), do: {:via, Registry, {ServeEx.Pipeline.Registry, {:batcher, id}}}

  @impl true
  def init(opts) do
    Admission.reset(admission_key(opts[:model].id))

    {:ok,
     %{
       model: opts[:model],
       handler: opts[:handler],
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
    Acknowledger.settle(Enum.map(late, &{&1, {:reply, @late_reply, :deadline_exceeded}}))

    if due != [] do
      # the model's current version: a swap takes effect from the next batch on
      model = ModelRegistry.current(state.model)
      Metrics.batch(Enum.sum(Enum.map(due, & &1.request.rows)))
      due = Enum.map(due, &%{&1 | model_version: model.version})
      Acknowledger.settle(run_isolated(state.handler, model, due))
    end

    compute_us = System.monotonic_time(:microsecond) - started
    Metrics.compute_time(id, compute_us)
    Admission.release(admission_key(id), state.rows, div(compute_us, 1000))
    %{state | pending: [], rows: 0, timer: nil}
  end

  # One engine call for the batch; if it raises, one call per request, so the failure
  # lands on the request that caused it.
  defp run_isolated(handler, model, messages) do
    handler.handle_batch(model, messages)
  catch
    kind, reason ->
      Logger.error(
        "batch of #{length(messages)} on model #{model.id} failed; retrying one by one: " <>
          Exception.format(kind, reason, __STACKTRACE__)
      )

      Enum.flat_map(messages, &run_alone(handler, model, &1))
  end

  defp run_alone(handler, model, message) do
    handler.handle_batch(model, [message])
  catch
    kind, reason -> [{message, {:failed, Exception.format_banner(kind, reason)}}]
  end
end
