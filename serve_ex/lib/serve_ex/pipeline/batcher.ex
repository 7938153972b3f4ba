defmodule ServeEx.Pipeline.Batcher do
  @moduledoc """
  One batcher per model. It gathers requests until their rows reach `batch_size` or
  the oldest has waited `batch_timeout_ms`, then runs `handle_batch`: one engine call
  per op present in the batch, on a dirty CPU scheduler (the NIF's choice), and one
  reply per request. A crash inside a batch fails its messages, not the batcher.
  """
  use GenServer
  require Logger

  alias ServeEx.{Engine, Metrics, Reply}
  alias ServeEx.Pipeline.Acknowledger

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, [:model, :batch_size, :batch_timeout_ms])
    GenServer.start_link(__MODULE__, opts, name: name(opts[:model].id))
  end

  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts),
    do: %{id: {__MODULE__, opts[:model].id}, start: {__MODULE__, :start_link, [opts]}}

  @doc "Queues a validated message on its model's batcher."
  @spec add(ServeEx.Message.t()) :: :ok
  def add(message), do: GenServer.cast(name(message.model_id), {:add, message})

  defp name(id), do: {:via, Registry, {ServeEx.Pipeline.Registry, {:batcher, id}}}

  @impl true
  def init(opts) do
    {:ok,
     %{
       model: opts[:model],
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

  @impl true
  def handle_info(:timeout, state), do: {:noreply, flush(%{state | timer: nil})}

  # A zero timeout is a message to self, behind every request already in the mailbox:
  # the batch takes in what is waiting, then flushes. (Timers have millisecond ticks.)
  defp start_timer(0), do: send(self(), :timeout) && :immediate
  defp start_timer(ms), do: Process.send_after(self(), :timeout, ms)

  defp flush(%{pending: []} = state), do: state

  defp flush(state) do
    if is_reference(state.timer), do: Process.cancel_timer(state.timer)
    messages = Enum.reverse(state.pending)
    Metrics.batch(state.rows)

    outcomes =
      try do
        handle_batch(state.model, messages)
      rescue
        error ->
          Logger.error(
            "batch of #{length(messages)} on model #{state.model.id} failed: #{Exception.message(error)}"
          )

          Enum.map(messages, &{&1, {:failed, Exception.message(error)}})
      end

    Acknowledger.settle(outcomes)
    %{state | pending: [], rows: 0, timer: nil}
  end

  @doc "Runs `messages` through `model`, one engine call per op; one outcome per message."
  @spec handle_batch(Engine.t(), [ServeEx.Message.t()]) :: [
          {ServeEx.Message.t(), Acknowledger.outcome()}
        ]
  def handle_batch(model, messages) do
    messages
    |> Enum.group_by(& &1.request.op)
    |> Enum.flat_map(fn {op, group} ->
      Enum.zip(group, run(model, op, Enum.map(group, & &1.request.args)))
    end)
    |> Enum.map(fn {message, result} -> {message, outcome(result, message.request.op)} end)
  end

  defp run(model, "generate", args),
    do: Engine.generate_batch(model, Enum.map(args, &{&1.n, &1.seed}))

  defp run(model, "decode", args),
    do: Engine.decode_batch(model, Enum.map(args, &f32_rows(&1.rows)))

  defp run(model, "encode", args),
    do: Engine.encode_batch(model, Enum.map(args, &f32_rows(&1.rows)))

  defp run(model, "generate_text", args) do
    Engine.generate_text_batch(
      model,
      Enum.map(args, &{&1.prompt, &1.max_new_tokens, &1.temperature, &1.top_k, &1.seed})
    )
  end

  defp f32_rows([first | _] = rows) do
    {for(row <- rows, v <- row, into: <<>>, do: <<v::float-32-little>>), length(first)}
  end

  defp outcome({:ok, text}, "generate_text"), do: {:reply, Reply.text(text), :ok}
  defp outcome({:ok, {mu, logvar}}, "encode"), do: {:reply, Reply.posterior(mu, logvar), :ok}
  defp outcome({:ok, tensor}, _op), do: {:reply, Reply.tensor(tensor), :ok}

  defp outcome({:error, {:bad_model, text}}, _op),
    do: {:reply, Reply.error(:internal, text), :internal}

  defp outcome({:error, {code, text}}, _op), do: {:reply, Reply.error(code, text), code}
end
