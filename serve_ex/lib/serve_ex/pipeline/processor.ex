defmodule ServeEx.Pipeline.Processor do
  @moduledoc """
  `handle_message`: checks where the reply would go (`ServeEx.ReplyTo`), the deadline
  (`ServeEx.Deadline`), decodes and validates the request (`ServeEx.Request`), admits
  it against its model's bound (`ServeEx.Admission`), then passes it to its model's
  worker (`ServeEx.Pipeline.Workers`). An invalid, late or overloading request is answered with an error reply
  right away; one whose `reply_to` is not accepted is dead-lettered without a publish. A crash while handling becomes a
  failed message (see `ServeEx.Pipeline.FailurePolicy`), logged once with its stack
  trace; the processor lives on.
  """
  use GenServer
  require Logger

  alias ServeEx.{Acknowledger, Admission, Deadline, ModelRegistry, Reply, ReplyTo, Request}
  alias ServeEx.Pipeline.Workers

  @spec start_link({non_neg_integer(), ReplyTo.policy()}) :: GenServer.on_start()
  def start_link({index, reply_policy}),
    do: GenServer.start_link(__MODULE__, {index, reply_policy}, name: name(index))

  @spec child_spec({non_neg_integer(), ReplyTo.policy()}) :: Supervisor.child_spec()
  def child_spec({index, _} = arg),
    do: %{id: {__MODULE__, index}, start: {__MODULE__, :start_link, [arg]}}

  @doc "Hands `message` to processor `index`."
  @spec handle(non_neg_integer(), ServeEx.Message.t()) :: :ok
  def handle(index, message), do: GenServer.cast(name(index), {:message, message})

  defp name(index), do: {:via, Registry, {ServeEx.Pipeline.Registry, {:processor, index}}}

  @impl true
  def init(state), do: {:ok, state}

  @impl true
  def handle_cast({:message, message}, {index, reply_policy} = state) do
    try do
      handle_message(message, reply_policy)
    catch
      kind, reason ->
        Logger.error(
          "processor #{index} failed on a message: " <>
            Exception.format(kind, reason, __STACKTRACE__)
        )

        Acknowledger.settle([{message, {:failed, Exception.format_banner(kind, reason)}}])
    end

    {:noreply, state}
  end

  @doc """
  Validates one delivery and routes it: to its model's worker, or straight to a reply.
  One whose `reply_to` the policy refuses (`ServeEx.ReplyTo.allowed?/3`) is
  dead-lettered without a publish.
  """
  @spec handle_message(ServeEx.Message.t(), ReplyTo.policy()) :: :ok
  def handle_message(message, reply_policy) do
    if ReplyTo.allowed?(message.reply_to, message.user_id, reply_policy) do
      route(message)
    else
      Acknowledger.settle([
        {message, {:dead, "reply_to is missing or not an accepted reply queue name"}}
      ])
    end
  end

  @doc "Validates an HTTP request and routes it (its reply goes to the waiting handler)."
  @spec handle_http(ServeEx.Message.t()) :: :ok
  def handle_http(message), do: route(message)

  defp route(message) do
    with {:ok, deadline} <- Deadline.parse(message.deadline),
         :ok <- check_deadline(deadline),
         {:ok, request} <- parse(message),
         message = %{message | request: request, model_id: request.model.id, deadline: deadline},
         :ok <- admit(message) do
      Workers.add(message)
    else
      {:error, code, text} ->
        Acknowledger.settle([{message, {:reply, Reply.error(code, text), code}}])

      {:overloaded, admitted, retry_after_ms} ->
        Acknowledger.settle([
          {admitted, {:reply, Reply.overloaded(retry_after_ms), :overloaded}}
        ])
    end
  end

  defp parse(%{route: {id, op}} = message),
    do: Request.parse_http(message.payload, id, op, &ModelRegistry.lookup/1)

  defp parse(message), do: Request.parse(message.payload, &ModelRegistry.lookup/1)

  defp check_deadline(deadline) do
    if Deadline.passed?(deadline),
      do: {:error, :deadline_exceeded, "the request's deadline passed before it was computed"},
      else: :ok
  end

  defp admit(message) do
    case Admission.admit(Workers.admission_key(message), message.request.rows) do
      :ok -> :ok
      {:overloaded, retry_after_ms} -> {:overloaded, message, retry_after_ms}
    end
  end
end
